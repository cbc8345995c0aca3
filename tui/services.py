"""The console's one gateway to core: scans, checks, history, restore plans and the job queue.

Screens and the app call these methods (always from thread workers, since each
reads devices or the repository) and never core's modules directly. It is the
seam where a client of the agent can stand in for the in-process core, and
where the snapshot tests put a recorded machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from core.devices import DeviceTree, devices_signature, scan
from core.engine.restore import RestorePlan, plan_restore
from core.history import VolumeHistory, volume_history
from core.increments.restore import recover_replay_mounts
from core.jobs import JobQueue, Jobs
from core.preflight import VolumeCheck, check_volume
from core.repo.catalog import CatalogEntry, catalog
from core.repo.filemanifest import FileManifest
from core.repo.repository import Repository, RepoStatus, repository_status


@dataclass(frozen=True)
class Catalog:
    """What the repository holds and the machine's devices, read together for the wizard."""

    images: tuple[CatalogEntry, ...]
    increments: tuple[FileManifest, ...]
    tree: DeviceTree


class CoreServices:
    """Core, in this process, on the repository at ``repo_location`` (None: the default)."""

    def __init__(self, repo_location: str | None = None, jobs: Jobs | None = None) -> None:
        self.repo_location = repo_location
        self.jobs: Jobs = jobs if jobs is not None else JobQueue(repo_location)

    def scan(self) -> DeviceTree:
        """Return the machine's block devices."""
        return scan()

    def devices_signature(self) -> object:
        """Return a cheap fingerprint that changes when a scan would."""
        return devices_signature()

    def check(self, target: str) -> VolumeCheck:
        """Return every preflight finding for ``target``."""
        return check_volume(target)

    def history(self, target: str) -> VolumeHistory:
        """Return ``target``'s images and increments (BlockvaultError: no repository)."""
        return volume_history(self._repo(), target)

    def catalog(self) -> Catalog:
        """Return every image and increment, and the devices they could be restored to."""
        repo = self._repo()
        return Catalog(tuple(catalog(repo)), tuple(repo.increments()), scan())

    def volume_history_in(self, found: Catalog, key: str) -> VolumeHistory:
        """Return the history of the volume filed under ``key``, from a catalog already read."""
        return volume_history(
            None, key, found.tree, images=found.images, increments=found.increments
        )

    def plan_restore(self, entry: CatalogEntry, dest: str, *, preserve_label: bool) -> RestorePlan:
        """Return the guards' findings for restoring ``entry`` onto ``dest``.

        A restore killed while replaying may have left ``dest`` mounted: that mount is
        undone first (and said so among the findings), or the guards would find it.
        """
        recovered = recover_replay_mounts()
        plan = plan_restore(entry.manifest, dest, self._repo(), preserve_label=preserve_label)
        return replace(plan, findings=(*recovered, *plan.findings))

    def repository_status(self) -> RepoStatus:
        """Return where the repository is and whether it answers (asks a server: a thread)."""
        return repository_status(self.repo_location)

    def close(self) -> None:
        """Cancel the jobs still running and wait for them."""
        self.jobs.close()

    def _repo(self) -> Repository:
        return Repository.open(self.repo_location, create=False)
