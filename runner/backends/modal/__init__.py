"""The Modal path: a job compiled into a ``modal.App`` and run within budget.

One module per concern:

- ``errors``    Modal exceptions -> one-line ``ModalUserError`` s; credentials; names
- ``names``     app / Dict / volume names and where the store is in a container
- ``app``       a job's app before its bodies: image (one builder, the sweep's too),
                function plans, volume, claims Dict; entering an app
- ``compile``   the bodies registered on that app; the app described as data
- ``container`` what runs inside a solve container (``solve_shard``)
- ``detached``  the detached run's orchestrator body (``orchestrate``)
- ``claims``    claims and records in a ``modal.Dict``
- ``volume``    the job's files on its volume and the shard states they imply
- ``backend``   the ``Backend`` the shared orchestrator drives
- ``billing``   what an attempt is charged, from its submission (both Modal backends)
- ``relay``     the Modal side of a hand-over to the next orchestrator call
- ``simulate``  a simulated Modal for ``forge bench --orchestrator`` and the tests
- one module per command around a run: ``detach`` (``forge run --detach``),
  ``stop``, ``status``, ``download`` (over ``fetch``), ``cost`` (over
  ``reconcile``); ``handles`` opens a job's volume and Dict for them

Requires modal>=1.6.4 (pyproject.toml): ``App.stop``, ``App.lookup`` by app id
and the billing report are relied on, and the code is checked against 1.6.4's
source.
"""

from __future__ import annotations

from runner.backends.modal.app import (
    IMAGE_REQUIREMENTS,
    FunctionPlan,
    JobApp,
    build_image,
    enter_app,
    job_app,
)
from runner.backends.modal.backend import ModalBackend
from runner.backends.modal.billing import hourly, unanswered_results
from runner.backends.modal.compile import (
    CompiledJob,
    compile_job,
    describe,
    modal_settings,
    plan_json,
    plan_lines,
)
from runner.backends.modal.container import GPU_ENV, gpu_from_device
from runner.backends.modal.errors import (
    ModalUserError,
    check_name,
    credentials_found,
    modal_errors,
    require_credentials,
    unanswered,
    user_error,
)
from runner.backends.modal.names import MOUNT, container_store_root, volume_root

__all__ = [
    "GPU_ENV",
    "IMAGE_REQUIREMENTS",
    "MOUNT",
    "CompiledJob",
    "FunctionPlan",
    "JobApp",
    "ModalBackend",
    "ModalUserError",
    "build_image",
    "check_name",
    "compile_job",
    "container_store_root",
    "credentials_found",
    "describe",
    "enter_app",
    "gpu_from_device",
    "hourly",
    "job_app",
    "modal_errors",
    "modal_settings",
    "plan_json",
    "plan_lines",
    "require_credentials",
    "unanswered",
    "unanswered_results",
    "user_error",
    "volume_root",
]
