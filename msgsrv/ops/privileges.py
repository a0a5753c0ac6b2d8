"""Who the daemon and its children run as.

:func:`drop` gives up root for good once the listeners are bound (the
``[msgsrv]`` ``user`` / ``group`` settings); :func:`children_identity`
decides who a service's child processes will run as (a service's own
``user`` / ``group``), so that a command service can refuse to start when
that would be root.
"""

import grp
import os
import pwd
from dataclasses import dataclass
from typing import Optional, Tuple

from msgsrv.wire.errors import ConfigError


def _user(name):
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ConfigError("user %r does not exist" % name) from None


def _group_id(name):
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError("group %r does not exist" % name) from None


def lookup(user, group=""):
    """The ``(uid, gid)`` that :func:`drop` would switch to; raises ConfigError for an
    unknown user or group (nothing is changed)."""
    account = _user(user) if user else None
    gid = _group_id(group) if group else (account.pw_gid if account else os.getgid())
    return (account.pw_uid if account else os.getuid()), gid


def drop(user, group=""):
    """Switch this process to ``user`` (and ``group``, default the user's primary group).

    Names or numeric ids.  Supplementary groups become the user's own (none
    when only ``group`` is given).  Raises ConfigError for an unknown user or
    group, PermissionError when not allowed (not root), and RuntimeError if
    root could be regained afterwards.
    """
    account = _user(user) if user else None
    gid = _group_id(group) if group else account.pw_gid
    if account is not None:
        os.initgroups(account.pw_name, gid)
    else:
        os.setgroups([])
    os.setgid(gid)
    if account is not None:
        os.setuid(account.pw_uid)
        if account.pw_uid != 0 and _can_regain_root():
            raise RuntimeError("could switch back to root after dropping privileges")
    return (account.pw_uid if account else os.getuid()), gid


def _can_regain_root():
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True


@dataclass(frozen=True)
class RunAs:
    """Who a service's children run as.

    ``uid`` and ``name`` are the user.  With ``switch`` the child changes to
    ``uid``, ``gid`` and exactly the supplementary ``groups`` before it
    executes (only a root daemon can); without, it keeps the daemon's
    identity.  ``note`` says why a configured user or group was not applied.
    """

    uid: int
    name: str
    gid: Optional[int] = None
    groups: Tuple[int, ...] = ()
    switch: bool = False
    note: str = ""

    def spawn_options(self):
        """Keyword arguments of :func:`msgsrv.services.command.process.spawn` for this identity."""
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": self.groups}


def children_identity(user="", group="", daemon_user="", daemon_group="", euid=None):
    """Who children will run as, given a service's ``user`` / ``group``.

    ``daemon_user`` / ``daemon_group`` are the ``[msgsrv]`` settings; ``euid``
    the daemon's effective uid now (default: this process's).  A root daemon
    with a ``daemon_user`` counts as that user (it switches once its
    listeners are bound).  A root daemon switches children to ``user`` and
    ``group``; any other keeps its own identity for them: a ``user`` or
    ``group`` it does not have is an error when the daemon runs as
    ``daemon_user`` (that config cannot work), and otherwise only noted
    (``note``: a daemon started by an ordinary user for a try-out).  Raises
    ConfigError for unknown names and for that contradiction.
    """
    euid = os.geteuid() if euid is None else euid
    daemon = _user(daemon_user) if daemon_user else None
    fixed = daemon is not None and (euid == 0 or daemon.pw_uid == euid)
    current = daemon.pw_uid if fixed else euid
    if current == 0:
        return _switched(user, group)
    if fixed and euid == 0:
        gid = _group_id(daemon_group) if daemon_group else daemon.pw_gid
        groups = set(os.getgrouplist(daemon.pw_name, gid))
    else:
        groups = {os.getegid()}.union(os.getgroups())
    return _kept(user, group, current, groups, daemon_user if fixed else "")


def _switched(user, group):
    if not (user or group):
        return RunAs(0, _user_name(0))
    account = _user(user) if user else None
    gid = _group_id(group) if group else (account.pw_gid if account else os.getegid())
    groups = tuple(os.getgrouplist(account.pw_name, gid)) if account else ()
    uid = account.pw_uid if account else 0
    return RunAs(uid, _user_name(uid), gid, groups, switch=True)


def _kept(user, group, uid, groups, daemon_user):
    wrong = []
    if user and _user(user).pw_uid != uid:
        wrong.append("user = %s" % user)
    if group and _group_id(group) not in groups:
        wrong.append("group = %s" % group)
    name = _user_name(uid)
    if wrong and daemon_user:
        raise ConfigError("%s: the daemon runs as [msgsrv] user = %s, which cannot start "
                          "children as another user or group; set the same one here, or none"
                          % (" and ".join(wrong), daemon_user))
    note = ("%s not applied: the daemon does not run as root, so children run as uid %d (%s)"
            % (" and ".join(wrong), uid, name)) if wrong else ""
    return RunAs(uid, name, note=note)


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
