"""Train with token-importance dropout (configs/tid.yaml: the TID study's gpt2_125m on OpenWebText).

    python run_tid.py --config configs/quickstart.yaml --set tid.method=entropy   # offline, CPU
"""

from generic_runner import main

if __name__ == "__main__":
    main(default_config="configs/tid.yaml")
