"""Train Falcon, the baseline with every FFN a top-2-of-8 mixture of experts (configs/falcon.yaml).

    python run_falcon.py --config configs/quickstart.yaml      # offline, CPU
"""

from generic_runner import main

if __name__ == "__main__":
    main(default_config="configs/falcon.yaml")
