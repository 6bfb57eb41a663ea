#!/usr/bin/env python3
"""Writes a component's flag reference list (`--name<TAB>type<TAB>default<TAB>deprecated`, the format of
shared/reference/flags/ and docs/reference/flags/) from an upstream source. Python 3 standard library only.

Modes
  page    Parse the generated reference page of kubernetes/website
          (content/en/docs/reference/command-line-tools-reference/<component>.md) at the commit that
          regenerated it for the minor ("Update component reference for v1.NN"). The page is read from a
          checkout (--checkout DIR) or from a git dir at a revision (--git-dir DIR --rev REV).
  derive  Apply a changes file (TSV: component, change, flag, type, default, deprecated, source) to a base
          list, for a minor whose generated page is not available. Every added/removed/changed row must name
          its upstream source (release note PR). The output header says the list is derived, not extracted.

Examples (adding v1.38 once kubernetes/website has its generated pages):
  extract-flags.py page --git-dir WEBSITE.git --rev COMMIT --component kubelet --minor 1.38 \
      --source-note 'kubernetes/website commit COMMIT ("Update component reference for v1.38")' \
      > docs/reference/flags/v1.38/kubelet.txt
  extract-flags.py derive --base docs/reference/flags/v1.37/kube-controller-manager.txt \
      --changes docs/reference/flags/changes-1.38.tsv --component kube-controller-manager --minor 1.38 \
      > docs/reference/flags/v1.38/kube-controller-manager.txt
Then run scripts/gen-flag-lists.sh (names for validation) and copy the lists to tests/doubles/reference/.
"""
import argparse
import html
import os
import re
import subprocess
import sys

PAGE_DIR = "content/en/docs/reference/command-line-tools-reference"
COLUMNS = [
    "# columns: --name<TAB>type<TAB>default<TAB>deprecated",
    '#   type: as printed by the binary --help (pflag): "bool" = no type printed (boolean flag); strings = '
    "comma-separated list; other <...> forms are custom value syntaxes",
    '#   default: text after "Default:" on the page; "-" = none printed (zero value/empty)',
    "#   deprecated: no | deprecated | deprecated:use-config-file (kubelet: still accepted, warns; value "
    "belongs in KubeletConfiguration)",
    "# shorthand: -h=--help -v=--v",
    "# not listed: hidden flags (pflag MarkHidden) that the binary still parses; the page does not show them",
]

ROW = re.compile(
    r'<td colspan="2">(?P<head>[^<]*?)</td>\s*</tr>\s*<tr>\s*<td></td>\s*<td[^>]*>(?P<desc>.*?)</td>',
    re.S,
)
CONFIG_FILE_NOTE = "This parameter should be set via the config file"


def read_page(args):
    rel = f"{PAGE_DIR}/{args.component}.md"
    if args.checkout:
        with open(os.path.join(args.checkout, rel), encoding="utf-8") as f:
            return f.read()
    out = subprocess.run(
        ["git", f"--git-dir={args.git_dir}", "show", f"{args.rev}:{rel}"],
        check=True, capture_output=True,
    )
    return out.stdout.decode("utf-8")


def parse_head(head):
    """`-v, --v int&nbsp;...Default: 2` -> (name, type, default)."""
    text = html.unescape(head).replace("\xa0", " ").strip()
    default = "-"
    m = re.search(r"\s{2,}Default: (.*)$", text)
    if m:
        default = m.group(1).strip()
        text = text[: m.start()].strip()
    text = re.sub(r"^-[A-Za-z], ", "", text)  # shorthand
    name, _, kind = text.partition(" ")
    if not name.startswith("--"):
        raise ValueError(f"unexpected flag cell {head!r}")
    return name, (kind.strip() or "bool"), default


def deprecation(desc):
    text = html.unescape(re.sub(r"<[^>]+>", "", desc))
    if CONFIG_FILE_NOTE in text:
        return "deprecated:use-config-file"
    if text.lstrip().startswith("DEPRECATED") or re.search(r"\(DEPRECATED\b", text):
        return "deprecated"
    return "no"


def page_rows(page):
    rows = {}
    for m in ROW.finditer(page):
        name, kind, default = parse_head(m.group("head"))
        rows[name] = (kind, default, deprecation(m.group("desc")))
    if not rows:
        raise SystemExit("no flag rows found: not a generated component reference page?")
    return rows


def read_list(path):
    rows, header = {}, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#") or not line:
                header.append(line)
                continue
            name, kind, default, dep = (line.split("\t") + ["", "", ""])[:4]
            rows[name] = (kind, default, dep)
    return rows, header


def apply_changes(rows, changes_path, component):
    applied = []
    with open(changes_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 7:
                raise SystemExit(f"{changes_path}:{n}: want 7 tab-separated columns")
            comp, change, flag, kind, default, dep, source = cols[:7]
            if comp != component:
                continue
            if not source.strip():
                raise SystemExit(f"{changes_path}:{n}: every change must name its upstream source")
            if change == "removed":
                if flag not in rows:
                    raise SystemExit(f"{changes_path}:{n}: {flag} is not in the base list")
                del rows[flag]
            elif change in ("added", "changed"):
                if change == "added" and flag in rows:
                    raise SystemExit(f"{changes_path}:{n}: {flag} is already in the base list")
                if change == "changed" and flag not in rows:
                    raise SystemExit(f"{changes_path}:{n}: {flag} is not in the base list")
                old = rows.get(flag, ("", "", ""))
                rows[flag] = (kind or old[0], default or old[1], dep or old[2])
            else:
                raise SystemExit(f"{changes_path}:{n}: change must be added|removed|changed")
            applied.append(f"{change} {flag} ({source.strip()})")
    return applied


def emit(component, minor, source_lines, rows, out):
    out.write(f"# {component} command-line flags - Kubernetes v{minor}\n")
    for s in source_lines:
        out.write(f"# {s}\n")
    out.write("\n".join(COLUMNS) + "\n")
    for name in sorted(rows):
        kind, default, dep = rows[name]
        out.write(f"{name}\t{kind}\t{default}\t{dep}\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    pg = sub.add_parser("page", help="extract from a generated kubernetes/website reference page")
    pg.add_argument("--checkout")
    pg.add_argument("--git-dir")
    pg.add_argument("--rev")
    pg.add_argument("--source-note", required=True, help="repository + commit/tag, for the header")
    dv = sub.add_parser("derive", help="base list + sourced changes (when no page exists)")
    dv.add_argument("--base", required=True)
    dv.add_argument("--changes", required=True)
    dv.add_argument("--source-note", default="")
    for s in (pg, dv):
        s.add_argument("--component", required=True)
        s.add_argument("--minor", required=True, help="e.g. 1.38")
    a = p.parse_args()
    if a.mode == "page":
        if not a.checkout and not (a.git_dir and a.rev):
            p.error("page needs --checkout DIR or --git-dir DIR --rev REV")
        rows = page_rows(read_page(a))
        src = [f"source: kubernetes/website {PAGE_DIR}/{a.component}.md, {a.source_note}",
               "extracted by scripts/reference/extract-flags.py page"]
    else:
        rows, header = read_list(a.base)
        base_title = next((h[2:] for h in header if h.startswith("# ")), a.base)
        applied = apply_changes(rows, a.changes, a.component)
        src = [f"DERIVED, not extracted: no generated v{a.minor} page was available. Base: {base_title} "
               f"({os.path.basename(os.path.dirname(a.base))}/{os.path.basename(a.base)}); changes from "
               f"{os.path.basename(a.changes)} (release notes, PR numbers below). Flags not named in the "
               "release notes may differ; re-extract with the page mode when the page is available."]
        src += [h[2:] if h.startswith("# base ") else f"base {h[2:]}" for h in header if h.startswith(("# source:", "# base source:"))][:1]
        if a.source_note:
            src.append(a.source_note)
        src.append("changes applied: " + ("; ".join(applied) if applied else "none"))
    emit(a.component, a.minor, src, rows, sys.stdout)


if __name__ == "__main__":
    main()
