"""Cascade serving: CascadeModel (torch stages, its folder form), LeanCascade (array stages, e.g. ONNX Runtime
sessions) and the fused one-graph ONNX cascade. Routes with the plan's rule (planning.plan)."""
