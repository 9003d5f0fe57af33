"""The model boundary: ONNX messages without importing onnx (``proto``), the wire-level reader
(``wire``), where tensor bytes live (``store``), reading and checking a model file (``reading``),
the streaming atomic writer (``writer``), use-def queries over graphs (``graph``) and the
evaluation of constant subgraphs (``constfold``). It knows no folding rules."""
