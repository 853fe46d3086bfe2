"""Evaluation: what a run or a reproduction measures.

* :mod:`.metrics`: accuracy, NLL, agreement, calibration (ECE and the reliability diagram).
* :mod:`.probes`: frozen features: linear probes and retrieval.
* :mod:`.retrieval`: dual encoders: image<->text retrieval, zero-shot and hard-negative accuracy.
* :mod:`.attention`: per-head attention statistics of a ViT (how far and how broadly each head looks).
* :mod:`.sharpness`: the dominant eigenvalue of a loss Hessian (power iteration on Hessian-vector products).
* :mod:`.layer_similarity`: inter-layer similarity of a block stack and the intervals it makes redundant.
* :mod:`.report`: ``distillery report``, a run directory's ``report.md`` and plots.
"""
