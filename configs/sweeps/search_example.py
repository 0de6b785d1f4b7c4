"""A search as the issue wrote it: TPE, 12 trials in vmapped rounds of 4, over
the LR and the output multiplier of the default width-128 muP transformer.

    python -m hptransfer.sweep --config configs/sweeps/search_example.py --workdir runs/search_example
    python -m analysis.search --workdir runs/search_example --target model.width=1024 --out runs/search_example/analysis
    optuna-dashboard sqlite:///runs/search_example/study.db   # pip install optuna-dashboard
"""
from configs import transformer
from hptransfer.search import loguniform   # also uniform, int_uniform, choice
def get_config():
    c = transformer.get_config()
    c.search.sampler = "tpe"; c.search.num_trials = 12; c.search.batch_size = 4; c.search.seed = 0
    return c
def get_search_space():
    return {"optimizer.lr": loguniform(2.0 ** -12, 2.0 ** -3),
            "parameterization.output_mult": loguniform(0.25, 4.0)}
