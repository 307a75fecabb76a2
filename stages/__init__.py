"""One module per DVC stage: each takes typed params, calls msr, and writes the stage's outs."""
