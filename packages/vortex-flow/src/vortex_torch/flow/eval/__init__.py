"""``vortex eval``: measure a flow against dense attention on synthetic long-context tasks.

* :mod:`.tasks`: the task generators (passkey, NIAH single / multi-key / multi-value, variable tracking);
* :mod:`.hf_backend`: a Hugging Face model, dense vs Vortex's reference runtime (needs ``transformers``);
* :mod:`.server_backend`: OpenAI-compatible servers, one per budget (standard library only);
* :mod:`.runner`: the loop and scoring; :mod:`.report`: ``result.json``, the PNG plot (needs ``matplotlib``);
* :mod:`.command`: the command line.

Nothing here imports transformers, matplotlib or tqdm at import time.
"""

from .budgets import Budget, parse_budgets, parse_contexts
from .errors import EvalError, EvalUsageError
from .runner import Backend, run_eval
from .tasks import TASKS, Sample, make_sample, make_samples

__all__ = [
    "TASKS",
    "Backend",
    "Budget",
    "EvalError",
    "EvalUsageError",
    "Sample",
    "make_sample",
    "make_samples",
    "parse_budgets",
    "parse_contexts",
    "run_eval",
]
