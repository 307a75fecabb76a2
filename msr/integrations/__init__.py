"""msr inside other tools (optional extras): `lmms_eval` — msr as an lmms-eval model."""
