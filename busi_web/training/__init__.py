"""Training: from a stored run's parameters to a trained model and its artifacts.

Owns the job runner (one trainer process at a time, cancel, recovery:
:mod:`~busi_web.training.runner`), the trainer process
(:mod:`~busi_web.training.trainer`), one run from parameters to artifacts
(:mod:`~busi_web.training.run`), the loop (:mod:`~busi_web.training.loop`),
data feeding (:mod:`~busi_web.training.feeding`), the training parameters and
the checks before a run exists (:mod:`~busi_web.training.params`), training
aids (:mod:`~busi_web.training.aids`, :mod:`~busi_web.training.mixup`),
resuming (:mod:`~busi_web.training.resume`), the temperature and the
out-of-distribution reference fitted at the end (:mod:`~busi_web.training.trust`), and what follows a finished run:
its acceptance score, auto-promotion through the gate and its model card
(:mod:`~busi_web.training.finish`).

May import: evaluation, model, data, explain, store, plugins and the
contract. Knows nothing of diagnosis, the web or the command line.
"""
