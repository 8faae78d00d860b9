"""`miku admin set-password`: set an admin panel user's password (its argon2 hash, never the password).

    miku admin set-password                      user "admin", asks twice on the terminal
    miku admin set-password --user alice
    echo "$PW" | miku admin set-password --password-stdin
    miku admin set-password --print-hash         print the hash (for MIKU_ADMIN_PASSWORD_HASH) instead

The hash goes to the users file of the Serve config's `admin:` section (`users_file`, default
`.miku/admin-users`), written atomically with mode 0600. A running graph reads the file at each login.
"""
from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from graph.admin.config import AdminConfig
from graph.admin.passwords import PasswordPolicyError, check_user_name, hash_password, write_user_hash


def add_parser(sub) -> None:
    admin = sub.add_parser("admin", help="the admin panel (/admin): users and passwords")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    setter = admin_sub.add_parser("set-password", help="set a panel user's password (argon2 hash, 0600 file)")
    setter.add_argument("--user", default="admin", help="user name (default: admin)")
    setter.add_argument("--users-file", help="where hashes live (default: the config's admin.users_file)")
    setter.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    setter.add_argument("--print-hash", action="store_true", help="print the hash instead of writing the file")


def users_file_of(config_path: str | Path) -> str:
    from deployments.app import load_serve_config

    try:
        args = load_serve_config(config_path)["applications"][0].get("args") or {}
    except (OSError, ValueError):
        return AdminConfig().users_file
    return AdminConfig.from_dict(args.get("admin")).users_file


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New admin password: ")
    if getpass.getpass("Again: ") != first:
        raise PasswordPolicyError("the two passwords differ")
    return first


def run(args: argparse.Namespace) -> int:
    try:
        user = check_user_name(args.user)
        hashed = hash_password(read_password(args.password_stdin))
    except PasswordPolicyError as error:
        print(f"miku admin set-password: {error}", file=sys.stderr)
        return 2
    if args.print_hash:
        print(hashed)
        return 0
    path = write_user_hash(args.users_file or users_file_of(args.config), user, hashed)
    print(f"Password of {user!r} set in {path} (mode 0600). A running graph uses it from the next login.",
          file=sys.stderr)
    return 0
