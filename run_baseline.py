"""Train the TinyStories baseline GPT (configs/baseline.yaml).

    python run_baseline.py --config configs/quickstart.yaml      # offline, CPU, a few minutes
"""

from generic_runner import main

if __name__ == "__main__":
    main(default_config="configs/baseline.yaml")
