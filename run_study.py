"""Run a study: every arm at every seed on the same data, scored on the same held-out rows, compared.

    python run_study.py --study configs/studies/tid.yaml [--config FILE ...] [--set key=value ...] [--parallel N]
    python run_study.py --study configs/studies/tid.yaml --launcher slurm --set launcher.partition=gpu

See study.py for the study file, study_runner.py for how runs are trained and scored (study_slurm.py
for SLURM jobs), and study_report.py for the statistics.
"""

from study_runner import main

if __name__ == "__main__":
    main()
