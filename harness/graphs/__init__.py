"""Snapshots evaluated from exported graphs: the method's forward pass as data, run by the harness.

At evaluation the harness used to run the method's own Python (its builder and its module's forward) in
a sandboxed worker. Code can keep memory between calls and recognise probes, so statelessness could be
tested, never enforced. Here the method's process exports the forward pass once per architecture
(`torch.export`, functionalised) and hands the graph over with each snapshot, as JSON. The harness:

- checks the program before anything builds it (`check.py`): every operator from an allow-list of pure,
  deterministic ATen operators, no mutation of a buffer or an input, one tensor out, static shapes only,
  no symbolic expressions, no guard code, no custom objects, names that are identifiers;
- builds it with the weights from the snapshot's safetensors file (nothing the method wrote is
  unpickled), propagates fake tensors through it to bound every intermediate's size and the forward's
  FLOPs, and runs it in the harness's own process on the evaluation's device (`load.py`).

A graph is a pure function of its weights and input windows: it cannot remember, read a file, the clock
or randomness, so the statelessness probe has nothing left to catch; the causality probe still runs.
`export.py` is the method's side (imported in the method's process).
"""
