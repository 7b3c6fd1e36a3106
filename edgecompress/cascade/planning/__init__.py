"""Cascade planning on validation logits: confidences, plans and their latency model, candidates, the exact
solver, the builder, and risk-controlled thresholds. Knows nothing of sessions or studies."""
