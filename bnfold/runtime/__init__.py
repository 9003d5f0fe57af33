"""onnxruntime in a child process, shared by verification and benchmarks: the parent's side of
the child, the child's request loop, sessions, and the input data both feed the models."""
