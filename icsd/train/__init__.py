"""Training: the run (trainer), the epoch loop and step, optimizer and schedule, checkpoints and the run
folder, preemption, progress and trackers. Built on the library (``icsd`` outside ``train`` and ``tools``),
which never imports it."""
