"""Online data: the sources training reads, one rank's share each.

* ``contract``: the split contract (``ResumableSplit``, ``DataSplits``,
  ``rank_slice``) every source keeps and the trainer depends on.
* ``build``: ``build_data``, the configured source's train / val / test splits.
* ``loader``: the DataLoader that feeds a split to the train pipeline.
* sources: ``random_source`` (TorchRec's RandomRecDataset), ``synthetic`` (the
  seeded teacher of ``dlrm_dist.core.teacher``), ``criteo`` (memory-mapped npy days);
  ``batches`` and ``multi_hot`` turn numpy arrays into TorchRec ``Batch``es.

Offline preparation (raw TSV -> npy days) lives apart, in ``dlrm_dist.prep``.
"""
