"""Prove two models compute the same thing: run both in onnxruntime (at ORT_DISABLE_ALL) in a
child process on the same inputs and compare every output. The package is ``verification`` so
that ``bnfold.verify`` stays the function."""
