"""Train Condor, the baseline with an attention variant (configs/condor.yaml: 1 layer, standard).

    python run_condor.py --config configs/quickstart.yaml --set model.attention=head_linear_silu
    python run_condor.py --config configs/condor_6l.yaml     # the matched 6-layer comparison
"""

from generic_runner import main

if __name__ == "__main__":
    main(default_config="configs/condor.yaml")
