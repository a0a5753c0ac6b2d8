"""Give up root for good once the listeners are bound (``user`` / ``group`` settings)."""

import grp
import os
import pwd

from .errors import ConfigError


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
