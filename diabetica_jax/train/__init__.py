"""Training: config, setup (model assembly), the train-side feed, loss, optimizer, state, the jitted step, the loop
with its hooks, checkpoints, metrics, preemption, run directories and the memory plan."""
