"""Command presenters: what ``forge`` commands print and write, text and ``--json``.

Between the layers that do the work (oracle, jobspec, store, backends, train) and the
thin click commands of ``runner.cli``: a command here gathers what the layers below
report and words it; the layers below neither print nor write reports.
"""
