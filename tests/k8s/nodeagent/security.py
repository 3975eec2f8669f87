"""What a container runtime makes of a pod's ``securityContext``, for a process of this host.

A container starts as root with the runtime's default capabilities, unless its securityContext
(the container's, else the pod's) says otherwise; this module computes that ``Identity`` and
how to start a process with it (``setpriv``, after the agent's namespace setup, which needs root):

* ``runAsUser`` / ``runAsGroup`` (an image's user is root, group 0: images are not pulled),
  supplementary groups ``fsGroup`` and ``supplementalGroups``;
* ``runAsNonRoot``: a container that would run as root is refused with the kubelet's error
  (``CreateContainerConfigError``);
* capabilities: containerd's default set, less ``drop``, plus ``add`` (``privileged``: all), as
  the bounding set; a non-root process has none left after ``setuid``, and no inheritable or
  ambient ones;
* ``allowPrivilegeEscalation: false``: ``no_new_privs`` (no setuid program, no file capability);
* ``fsGroup``: the volumes the agent makes (``emptyDir``, Secrets, ConfigMaps, downward API,
  projected) belong to that group, setgid folders, as the kubelet's volume ownership does;
  ``emptyDir`` is 0777, as the kubelet makes it;
* the disk: a non-root container sees of the folders it cannot pass (the state dir, ``/root``
  where Python may live) only what it needs (its pod's folder, its volumes and working directory,
  the interpreter and the project's packages): ``wml_runner.isolation``'s tmpfs covers, in the
  container's mount namespace. Other pods' folders, the cluster's keys and kubeconfigs are not
  there.

Not done (a real runtime's, not this one's): user namespaces (root in a container is this host's
root, with the default capabilities), seccomp and AppArmor profiles, ``readOnlyRootFilesystem``
(there is no image file system), ``procMount``, sysctls, SELinux. Only an agent that runs as root
can change users: another one runs every container as itself, as before.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from wml_runner.isolation import RunUser, covered, runtime_paths, show_only

from .podenv import ConfigError

#: Linux capabilities, by number (``linux/capability.h``), as ``setpriv`` names them.
CAPABILITIES = (
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable "
    "net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio sys_chroot "
    "sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time sys_tty_config mknod lease "
    "audit_write audit_control setfcap mac_override mac_admin syslog wake_alarm block_suspend audit_read "
    "perfmon bpf checkpoint_restore").split()
#: What containerd gives a container that asks for nothing.
DEFAULT_CAPABILITIES = frozenset(("chown dac_override fsetid fowner mknod net_raw setgid setuid setfcap setpcap "
                                  "net_bind_service sys_chroot kill audit_write").split())
#: Volume kinds whose files the agent writes, hence owned by ``fsGroup`` (as the kubelet does).
OWNED_VOLUMES = ("emptyDir", "secret", "configMap", "downwardAPI", "projected")


@dataclass(frozen=True)
class Identity:
    """Who a container's process is: user, group, supplementary groups, capabilities (the
    bounding set), ``no_new_privs``; ``honoured`` is False where the agent cannot switch users."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    capabilities: frozenset[str] = DEFAULT_CAPABILITIES
    no_new_privs: bool = False
    honoured: bool = True

    def argv(self) -> list[str]:
        """The ``setpriv`` command line that starts the command (which follows) as this identity."""
        if not self.honoured:
            return []
        caps = ",".join(["-all"] + [f"+{c}" for c in CAPABILITIES if c in self.capabilities & _bounding()])
        argv = ["setpriv", f"--bounding-set={caps}", "--inh-caps=-all"]
        if self.uid or self.gid or self.groups:
            groups = f"--groups={','.join(map(str, self.groups))}" if self.groups else "--clear-groups"
            argv += [f"--reuid={self.uid}", f"--regid={self.gid}", groups]
        if self.no_new_privs:
            argv.append("--no-new-privs")
        return argv + ["--"]

    def preexec(self, shown: list[Path]) -> Optional[Callable[[], None]]:
        """What the agent's child runs before ``exec`` for a non-root container: a mount namespace
        in which the folders it cannot pass show only ``shown`` (and the interpreter). None for root."""
        if not self.honoured or self.uid == 0:
            return None
        covers = covered(tuple(sorted({*runtime_paths(), *(p.resolve() for p in shown)})),
                         RunUser(str(self.uid), self.uid, self.gid))
        return (lambda: show_only(covers)) if covers else None


def identity(pod: dict, container: dict) -> Identity:
    """The identity of ``container`` of ``pod``; a ``ConfigError`` (the kubelet's words) when
    ``runAsNonRoot`` forbids it."""
    pod_ctx: dict[str, Any] = pod["spec"].get("securityContext") or {}
    ctx: dict[str, Any] = container.get("securityContext") or {}

    def setting(name: str) -> Any:
        return ctx[name] if ctx.get(name) is not None else pod_ctx.get(name)

    uid, gid = setting("runAsUser"), setting("runAsGroup")
    if setting("runAsNonRoot"):
        where = f'(pod: "{_pod_name(pod)}", container: {container["name"]})'
        if uid == 0:
            raise ConfigError(f"container's runAsUser breaks non-root policy {where}")
        if uid is None:  # every "image" runs as root here
            raise ConfigError(f"container has runAsNonRoot and image will run as root {where}")
    groups = [g for g in [pod_ctx.get("fsGroup"), *(pod_ctx.get("supplementalGroups") or [])] if g is not None]
    return Identity(uid=uid or 0, gid=gid or 0, groups=tuple(dict.fromkeys(groups)),
                    capabilities=_capabilities(ctx), no_new_privs=ctx.get("allowPrivilegeEscalation") is False,
                    honoured=os.geteuid() == 0)


def _pod_name(pod: dict) -> str:
    meta = pod["metadata"]
    return f"{meta['name']}_{meta['namespace']}({meta.get('uid', '')})"


def _capabilities(ctx: dict) -> frozenset[str]:
    """The bounding set: the default, less ``drop``, plus ``add``; everything when privileged."""
    if ctx.get("privileged"):
        return frozenset(CAPABILITIES)
    asked = ctx.get("capabilities") or {}

    def names(key: str) -> set[str]:
        return {c.lower().removeprefix("cap_") for c in asked.get(key) or []}

    drop = names("drop")
    kept = set() if "all" in drop else DEFAULT_CAPABILITIES - drop
    return frozenset(kept | names("add"))


def _bounding() -> set[str]:
    """The agent's own bounding set: a container can have no capability beyond it."""
    with open("/proc/self/status") as status:
        mask = int(next(line for line in status if line.startswith("CapBnd:")).split()[1], 16)
    return {name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1}


def own_volumes(pod: dict, volumes: dict[str, Path], pod_dir: Path) -> None:
    """Give the volumes the agent made for ``pod`` (under ``pod_dir``) the kubelet's modes:
    ``emptyDir`` 0777; with an ``fsGroup``, that group and setgid folders, group-readable files."""
    group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
    for volume in pod["spec"].get("volumes") or []:
        here = volumes.get(volume["name"])
        if here is None or not any(k in volume for k in OWNED_VOLUMES) or pod_dir not in here.parents:
            continue
        if "emptyDir" in volume:
            here.chmod(0o777)
        if group is not None:
            _give_group(here, group)


def _give_group(top: Path, group: int) -> None:
    """``chgrp -R group``: folders setgid and group-searchable, files group-readable."""
    for folder, dirs, files in os.walk(top):
        os.chown(folder, -1, group)
        os.chmod(folder, stat.S_IMODE(os.stat(folder).st_mode) | stat.S_ISGID | 0o050)
        for name in files:
            path = os.path.join(folder, name)
            os.chown(path, -1, group, follow_symlinks=False)
            os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | 0o040)
