"""Lightning callbacks: benchmark evaluation during training, the Thompson bandit's loop, the
throughput of every step."""

from mrpo.callbacks.bandit import ThompsonFeedback
from mrpo.callbacks.eval import EvalCallback
from mrpo.callbacks.throughput import ThroughputMonitor, ThroughputTotals

__all__ = ["EvalCallback", "ThompsonFeedback", "ThroughputMonitor", "ThroughputTotals"]
