"""Lightning callbacks: benchmark evaluation during training (:mod:`.eval`), the Thompson
bandit's loop (:mod:`.bandit`), the throughput of every step (:mod:`.throughput`), the progress
bar (:mod:`.progress`), and the ``callbacks`` group's settings (:mod:`.settings`)."""
