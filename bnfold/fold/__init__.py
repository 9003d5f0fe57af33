"""Folding as passes over one shared state.

- ``state``: the model being folded, its rules, shapes, weight files and held arrays, and the
  edits a fold makes (``FoldState``);
- ``backward`` (into the layer before, else via ``forward`` into the layer after) and
  ``cleanup``: the passes, each returning a ``PassResult``;
- ``calls``: model-local functions folded per call, with the constants their calls pass (a
  copy per group of calls where those differ);
- ``driver``: runs the fold pass to a fixed point (``engine.pass_limit``: how many passes a
  model can need);
- ``engine``: ``FoldEngine``, which plans the function calls, runs the driver, settles the
  calls, then cleanup, and writes the report;
- ``report``: what the fold decided (``FoldReport``), light enough for the CLI to import;
- ``rules/``: one folding rule per file.

Where a tensor's bytes are while folding (inline in the input, in its external data file, or a
folded array bnfold holds until it writes) is decided in ``bnfold.model.wire`` and
``bnfold.model.writer``.
"""
