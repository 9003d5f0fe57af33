"""The model boundary, where bytes live: ONNX messages without importing onnx (``proto``), the
wire-level reader that leaves weights in the file (``wire``), the tensor store that says where each
weight's bytes are (``store``), external data files (``external``), every tensor of a graph
(``tensors``), reading a model file (``reading``) and refusing what cannot work (``checks``), the
streaming writer (``writer``) and atomic writes (``staging``), use-def queries over graphs
(``graph``) and the evaluation of constant subgraphs (``constfold``). It knows no folding rules.
"""
