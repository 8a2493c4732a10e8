#!/usr/bin/env python3
"""Normalises a raw etcd-compat transcript (tests/etcd-compat/scenario.sh).

    normalise.py --endpoints A,B,C < raw > normalised

Two runs of the scenario on two fresh clusters must give the same normalised
transcript. Only what legitimately differs between clusters is rewritten:

* client endpoints -> E1, E2, E3 (by position in --endpoints); a member's
  peer address -> P<i> and its name -> N<i>, i being its client endpoint's
  position; any other loopback address -> <addr>;
* member ids -> M<i> (same i), cluster ids -> <cluster>; the member that
  served a request (header member_id) -> <member>, since the client
  balances requests over the endpoints;
* lease ids -> L1, L2... in order of first appearance;
* raft terms and indexes, db sizes, etcd versions, snapshot hashes and key
  counts, "took" durations, remaining TTLs (checked to lie in 1..granted);
* which member leads (only the number of leaders is kept);
* etcdctl's own zap log lines (client retries, snapshot progress): they carry
  timestamps and client ids and are not server output.

Revisions, values, counts, create/mod revisions, versions of keys and error
messages are kept. JSON is re-printed with sorted keys, one field per line,
and base64 keys/values decoded, so that a diff points at the field.

Steps whose name contains "[unordered]" print sets in an arbitrary order
(etcd's member list is sorted by random member ids, endpoint health by
completion, lease list by map order): their lines, table rows and JSON array
elements are sorted after normalising. Lease attached-key lists are sorted
everywhere (etcd prints them in map order).
"""

import argparse
import base64
import json
import re
import sys

ADDRESS = re.compile(r"(?:\d{1,3}(?:\.\d{1,3}){3}|localhost|\[[0-9a-fA-F:]+\]):\d{1,5}")
LEASE_WORD = re.compile(r"\blease ([0-9a-f]{1,16})\b")
SESSION_KEY = re.compile(r"\b(compat-(?:lock|elect)/)([0-9a-f]{1,16})\b")
TOOK = re.compile(r"took = [0-9.]+\S*")
REMAINING = re.compile(r"TTL\((\d+)s\), remaining\((-?\d+)s\)")
ATTACHED = re.compile(r"attached keys\(\[([^\]]*)\]\)")
HEX_LINE = re.compile(r"^[0-9a-f]{1,16}$")
EXIT_LINE = re.compile(r"^-> exit -?\d+$")
# etcdctl prints a member id as %16x (space-padded) in member command lines.
MEMBER_UPDATED = re.compile(r"Member +([0-9a-f]{1,16}) updated in cluster +([0-9a-f]{1,16})")


class Normaliser:
    """Holds the label maps; one instance per transcript."""

    def __init__(self, endpoints):
        self.addresses = {e: f"E{i + 1}" for i, e in enumerate(endpoints)}
        self.endpoint_index = {e: i + 1 for i, e in enumerate(endpoints)}
        self.members = {}
        self.leases = {}

    # ---- learning (first pass) -------------------------------------------

    def index_of(self, text):
        """The position of the first known client endpoint in text, or None."""
        for address in ADDRESS.findall(text or ""):
            if address in self.endpoint_index:
                return self.endpoint_index[address]
        return None

    def learn_member(self, member_id, index, peers=()):
        if index is None:
            return
        label = f"M{index}"
        if self.members.get(member_id, label) != label:
            label = "<conflicting member id>"
        self.members[member_id] = label
        for peer in peers:
            for address in ADDRESS.findall(peer):
                self.addresses.setdefault(address, f"P{index}")

    def learn_json(self, value):
        """Learns member ids and peer addresses from member list and
        endpoint status JSON."""
        if isinstance(value, list):
            for item in value:
                self.learn_json(item)
        elif isinstance(value, dict):
            if "clientURLs" in value and "ID" in value:
                index = self.index_of(" ".join(value.get("clientURLs") or []))
                self.learn_member(value["ID"], index, value.get("peerURLs") or [])
            if "Endpoint" in value and isinstance(value.get("Status"), dict):
                header = value["Status"].get("header") or {}
                if "member_id" in header:
                    self.learn_member(header["member_id"], self.index_of(value["Endpoint"]))
            for item in value.values():
                self.learn_json(item)

    def learn_table(self, rows):
        header, body = rows[0], rows[1:]
        if "ID" not in header:
            return
        where = header.index("CLIENT ADDRS") if "CLIENT ADDRS" in header else (
            header.index("ENDPOINT") if "ENDPOINT" in header else None)
        if where is None:
            return
        peers_at = header.index("PEER ADDRS") if "PEER ADDRS" in header else None
        for row in body:
            try:
                member_id = int(row[header.index("ID")], 16)
            except ValueError:
                continue
            peers = [row[peers_at]] if peers_at is not None else []
            self.learn_member(member_id, self.index_of(row[where]), peers)

    # ---- labels ----------------------------------------------------------

    def lease(self, lease_id, unordered=False):
        if lease_id not in self.leases:
            if unordered:
                # First seen in a list printed in arbitrary order: no label
                # order can be derived from it.
                return "L<first seen unordered>"
            self.leases[lease_id] = f"L{len(self.leases) + 1}"
        return self.leases[lease_id]

    def member(self, member_id):
        return self.members.get(member_id, "<unknown member>")

    def address(self, match):
        return self.addresses.get(match.group(0), "<addr>")

    # ---- text ------------------------------------------------------------

    def text(self, line, unordered=False):
        line = ADDRESS.sub(self.address, line)
        line = TOOK.sub("took = <took>", line)
        line = LEASE_WORD.sub(lambda m: "lease " + self.lease(int(m.group(1), 16), unordered), line)
        line = SESSION_KEY.sub(lambda m: m.group(1) + self.lease(int(m.group(2), 16), unordered), line)
        line = REMAINING.sub(remaining, line)
        line = ATTACHED.sub(lambda m: "attached keys([" + " ".join(sorted(m.group(1).split())) + "])", line)
        line = MEMBER_UPDATED.sub(
            lambda m: f"Member {self.member(int(m.group(1), 16))} updated in cluster <cluster>", line)
        return line

    # ---- JSON ------------------------------------------------------------

    def json_value(self, value, unordered=False):
        if isinstance(value, dict):
            out = {k: self.json_field(k, v, unordered) for k, v in value.items()}
            if "clientURLs" in value and "name" in value:
                # A member's name follows its client endpoint's position.
                index = self.index_of(" ".join(value.get("clientURLs") or []))
                out["name"] = f"N{index}" if index else "<name>"
            if "Endpoint" in value and isinstance(value.get("Status"), dict):
                header = value["Status"].get("header") or {}
                if "member_id" in header:
                    out["Status"]["header"]["member_id"] = self.member(header["member_id"])
            return out
        if isinstance(value, list):
            items = [self.json_value(v, unordered) for v in value]
            if unordered:
                items.sort(key=lambda v: json.dumps(v, sort_keys=True))
            return items
        if isinstance(value, str):
            return self.text(value, unordered)
        return value

    def json_field(self, key, value, unordered):
        if key == "cluster_id":
            return "<cluster>"
        if key == "member_id":
            return "<member>"
        if key == "ID" and isinstance(value, int):
            return self.member(value)
        if key == "leader":
            return "<leader: a member>" if value in self.members else "<leader: unknown>"
        if key in ("raft_term", "raftTerm", "raftIndex", "raftAppliedIndex"):
            return "<raft>"
        if key in ("dbSize", "dbSizeInUse", "totalSize"):
            return "<size>"
        if key in ("hash", "totalKey"):
            return f"<{key}>"
        if key == "version" and isinstance(value, str):
            return "<version>"
        if key == "took":
            return "<took>"
        if key == "lease" and isinstance(value, int) and value != 0:
            return self.lease(value, unordered)
        if key in ("key", "value", "range_end") and isinstance(value, str):
            return self.text(decode(value), unordered)
        return self.json_value(value, unordered)

    def json_line(self, value, unordered):
        normal = self.json_value(value, unordered=unordered)
        return json.dumps(normal, sort_keys=True, indent=1).splitlines()

    # ---- tables ----------------------------------------------------------

    def table(self, rows, unordered):
        header, body = rows[0], rows[1:]
        out, leaders = [], 0
        for row in body:
            cells = dict(zip(header, row))
            index = self.index_of(cells.get("CLIENT ADDRS") or cells.get("ENDPOINT") or "")
            normal = []
            for name, cell in zip(header, row):
                if name == "IS LEADER":
                    leaders += cell == "true"
                normal.append(self.table_cell(name, cell, index, unordered))
            out.append(normal)
        if unordered:
            out.sort()
        lines = [render(header)] + [render(r) for r in out]
        if "IS LEADER" in header:
            lines.append(f"(rows with IS LEADER true: {leaders})")
        return lines

    def table_cell(self, name, cell, index, unordered):
        if name == "ID":
            try:
                return self.member(int(cell, 16))
            except ValueError:
                return cell
        if name == "NAME":
            return f"N{index}" if index else "<name>"
        if name == "IS LEADER":
            return "<leader?>"
        if name in ("RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX"):
            return "<raft>"
        if name in ("DB SIZE", "TOTAL SIZE"):
            return "<size>"
        if name == "VERSION":
            return "<version>"
        if name == "TOOK":
            return "<took>"
        return self.text(cell, unordered)

    # ---- steps -----------------------------------------------------------

    def transcript(self, lines):
        steps = split_steps(lines)
        for _, body in steps:
            for kind, item in blocks(body):
                if kind == "json":
                    self.learn_json(item)
                elif kind == "table":
                    self.learn_table(item)
        out = []
        for name, body in steps:
            out.extend(self.step_lines(name, body))
        return out

    def step_lines(self, name, body):
        unordered = name is not None and "[unordered]" in name
        head = [] if name is None else ["## " + name]
        lines, run, tail = [], [], []
        for kind, item in blocks(body):
            if kind == "text":
                if HEX_LINE.match(item) and name and name.startswith("lease list"):
                    run.append(self.lease(int(item, 16), unordered))
                else:
                    run.append(self.text(item, unordered))
                continue
            lines.extend(unordered_sorted(run) if unordered else run)
            run = []
            if kind == "json":
                lines.extend(self.json_line(item, unordered))
            elif kind == "table":
                lines.extend(self.table(item, unordered))
            else:
                tail.append(item)
        lines.extend(unordered_sorted(run) if unordered else run)
        return head + lines + tail


def unordered_sorted(lines):
    """Sorts a set's lines; a "found N leases" summary stays first."""
    return sorted(lines, key=lambda line: (not line.startswith("found "), line))


def remaining(match):
    granted, left = int(match.group(1)), int(match.group(2))
    shown = "<1..TTL>" if 0 < left <= granted else str(left)
    return f"TTL({granted}s), remaining({shown}s)"


def decode(value):
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except ValueError:
        return value
    return text if text.isprintable() else value


def render(cells):
    return "| " + " | ".join(cells) + " |"


def split_steps(lines):
    """[(name or None, body lines)]; lines before the first header get None."""
    steps = [(None, [])]
    for line in lines:
        if line.startswith("## "):
            steps.append((line[3:], []))
        else:
            steps[-1][1].append(line)
    return [s for s in steps if s[0] is not None or s[1]]


def is_client_log(value):
    return isinstance(value, dict) and "level" in value and "caller" in value


def blocks(body):
    """Yields ("json", value), ("table", rows), ("exit", line) or
    ("text", line); zap log lines are dropped."""
    table = []
    for line in body + [None]:
        if line is not None and line[:1] in ("+", "|"):
            if line.startswith("|"):
                table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if table:
            yield "table", table
            table = []
        if line is None:
            return
        if line[:1] in ("{", "["):
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            if value is not None:
                if not is_client_log(value):
                    yield "json", value
                continue
        yield ("exit" if EXIT_LINE.match(line) else "text"), line


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", required=True, help="comma-separated host:port list")
    args = parser.parse_args()
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    lines = sys.stdin.read().splitlines()
    for line in Normaliser(endpoints).transcript(lines):
        print(line)


if __name__ == "__main__":
    main()
