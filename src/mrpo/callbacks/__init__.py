"""Lightning callbacks: benchmark evaluation during training, the Thompson bandit's loop."""

from mrpo.callbacks.bandit import ThompsonFeedback
from mrpo.callbacks.eval import EvalCallback

__all__ = ["EvalCallback", "ThompsonFeedback"]
