"""experiments/index.html: one self-contained page of every run (no server, no network, no
scripts from elsewhere). A table sortable by clicking a column, each run's curves drawn inline
as SVG from its metrics.csv, links to its folder and A/B reports, and the lineage of continued
runs. Written at the end of every run and by inference.py --report."""
import datetime
import errno
import html
import stat
from pathlib import Path
from typing import Optional

from store import runs as runstore
from store.listing import changed, format_changed, format_duration, headline, summary
from store.runs import list_runs, read_metrics, write_text
from utils.features import hooks

INDEX = "index.html"
COLUMNS = ("status", "id", "name", "tags", "changed", "metric", "final", "best", "epochs", "duration", "started (UTC)",
           "parent", "curves", "reports", "notes")
NUMERIC = ("final", "best", "epochs", "duration")

STYLE = """
body{font:12px system-ui,sans-serif;margin:12px;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:3px 4px;text-align:left;vertical-align:middle;white-space:nowrap}
th{position:sticky;top:0;background:#f4f4f4;cursor:pointer;user-select:none}
th.asc::after{content:" \\25B2"} th.desc::after{content:" \\25BC"}
tr:target{background:#fff6cc} td.notes{white-space:normal;max-width:24em}
td.wrap{white-space:normal;max-width:14em;overflow-wrap:break-word}
.key{display:inline-block;width:14px;height:3px;vertical-align:middle}
.finished{color:#186a1e} .failed,.damaged{color:#b00020} .killed,.interrupted{color:#a05a00} .running{color:#0b57d0}
tr.group{background:#f3f7ff;font-weight:600} tr.member td:nth-child(2){padding-left:20px}
#filter{margin:8px 0;padding:4px;width:24em} ul{margin:2px 0} .muted{color:#777}
"""

LEGEND = ('curves: <span class="key" style="background:#1f77b4"></span> first loss, <span class="key" '
          'style="background:#ff7f0e"></span> second loss (one scale), <span class="key" style="background:#2ca02c"></span> '
          'the run\'s metric (its own scale), per epoch.')

SCRIPT = """
(function(){
  var table=document.getElementById('runs'), body=table.tBodies[0];
  var heads=table.tHead.rows[0].cells;
  function key(row,i,num){var c=row.cells[i],v=c.getAttribute('data-value');if(v===null)v=c.textContent;
    if(!num)return v.toLowerCase();var n=parseFloat(v);return isNaN(n)?-Infinity:n;}
  Array.prototype.forEach.call(heads,function(th,i){th.addEventListener('click',function(){
    var num=th.getAttribute('data-type')==='num', asc=!th.classList.contains('asc');
    Array.prototype.forEach.call(heads,function(h){h.classList.remove('asc','desc');});
    th.classList.add(asc?'asc':'desc');
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a,i,num),y=key(b,i,num);return (x<y?-1:x>y?1:0)*(asc?1:-1);});
    rows.forEach(function(r){body.appendChild(r);});
  });});
  document.getElementById('filter').addEventListener('input',function(e){
    var q=e.target.value.toLowerCase();
    Array.prototype.forEach.call(body.rows,function(r){r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});
  });
})();
"""


def write_index(experiments: Optional[Path] = None) -> Path:
    """Write experiments/index.html for every run in the store; returns its path."""
    experiments = experiments or runstore.EXPERIMENTS
    path = experiments / INDEX
    if path.exists() and not path.stat().st_mode & stat.S_IWUSR:  # made read-only by its owner: left as it is
        raise PermissionError(errno.EACCES, "it is read-only", str(path))
    runs = list_runs(experiments)
    rows = "\n".join(table_rows(runs, experiments))
    heads = "".join(f'<th data-type="{"num" if c in NUMERIC else "text"}">{c}</th>' for c in COLUMNS)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Runs: {len(runs)}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>Runs in experiments/</h1>\n"
            f'<p class="muted">{len(runs)} runs, written {when}. Click a column header to sort; type to filter. {LEGEND}</p>\n'
            f'<input id="filter" placeholder="filter: id, name, tag, key=value ...">\n'
            f'<table id="runs"><thead><tr>{heads}</tr></thead><tbody>\n{rows}\n</tbody></table>\n'
            f"<h2>Lineage</h2>\n{lineage(runs)}\n<script>{SCRIPT}</script>\n</body></html>\n")
    write_text(path, page)
    return path


def rewrite_index(say: bool = True) -> Optional[str]:
    """write_index after something changed; a failure to write it never fails what came before: it
    is said on stderr (unless `say` is off: the caller records it) and returned, else None."""
    try:
        write_index()
    except OSError as e:
        problem = f"experiments/index.html could not be rewritten ({e.strerror or e}); python train.py --list shows the runs"
        if say:
            print(f"note: {problem}")
        return problem
    return None


def table_rows(runs: list[dict], experiments: Path) -> list[str]:
    """One row per run and per feature row (a group, a sweep), by start time; the runs a feature row
    owns (run.json's group or sweep) folded under it (class member)."""
    owners = [row for rows_of in hooks("page_rows") for row in rows_of(runs)]
    members = {row["id"]: [r for r in runs if (r.get(row["kind"]) or {}).get("id") == row["id"]] for row in owners}
    folded = {r["id"] for rows in members.values() for r in rows}
    tops = sorted([r for r in runs if r["id"] not in folded] + owners, key=lambda r: (r.get("start_utc", ""), r["id"]))
    out = []
    for r in tops:
        if "kind" not in r:
            out.append(run_row(r, experiments))
            continue
        out.append(group_html(r, experiments))
        out += [run_row(m, experiments).replace("<tr ", f'<tr class="member" data-group="{r["id"]}" ', 1) for m in members[r["id"]]]
    return out


def group_html(g: dict, experiments: Path) -> str:
    """A group's row (the members' mean and 95% interval, members done of all) or a sweep's (its best
    trial, trials done of all): with its curves and reports."""
    gid, metric, kind = g["id"], headline(g), g["kind"]
    agg = (g.get("aggregate") or {}).get(metric) or {}
    ci = agg.get("ci95")
    text = _num(agg.get("mean")) + (f" ± {(ci[1] - ci[0]) / 2:.4f}" if ci else "")
    where = g["folder"]
    folder = experiments / where / gid
    png = next((f'<a href="{where}/{gid}/{n}">png</a>' for n in ("curves.png", "history.png") if (folder / n).exists()), "-")
    found = sorted(folder.glob("compare_*.md")) + sorted(folder.glob("report.md"))
    links = "<br>".join(f'<a href="{where}/{gid}/{html.escape(p.name)}">{html.escape(p.stem.removeprefix("compare_"))}</a>'
                        for p in found) or "-"
    done, total = g["members"]["done"], g["members"]["total"]
    duration = summary(g)["duration_s"]
    label = f'<a href="{where}/{gid}/{kind}.json">{kind} {gid}</a>'
    cells = [cell(g["status"], cls=g["status"]), cell(label, gid, raw=True),
             cell(g["name"] or "-", cls="wrap"), cell(", ".join(g["tags"]) or "-", cls="wrap"),
             cell(format_changed(g["changed"]) or "-", cls="wrap"),
             cell(metric), cell(text, agg.get("mean", "")), cell("-"),
             cell(f"{done}/{total} {g['unit']}", done),
             cell(format_duration(duration), duration if duration is not None else ""),
             cell((g["start_utc"] or "")[:19].replace("T", " "), cls="wrap"), cell("-"), cell(png, raw=True),
             cell(links, raw=True, cls="wrap"),
             cell("", cls="notes")]
    return f'<tr id="{kind}-{gid}" class="group">{"".join(cells)}</tr>'


def cell(text: str, value=None, cls: str = "", raw: bool = False) -> str:
    """A table cell; `value` is what sorting uses when it differs from the text shown."""
    attrs = (f' data-value="{html.escape(str(value))}"' if value is not None else "") + (f' class="{cls}"' if cls else "")
    return f"<td{attrs}>{text if raw else html.escape(str(text))}</td>"


def run_row(r: dict, experiments: Path) -> str:
    s = summary(r)
    rid, metric = s["id"], s["headline"]
    final = (s["metrics"] or {}).get(metric)
    best = (s["best"] or {}).get(metric)
    parent = f'<a href="#run-{html.escape(s["parent"])}">{html.escape(s["parent"])}</a>' if s["parent"] else "-"
    notes = " / ".join(s["notes"] or [])
    cells = [cell(s["status"], cls=s["status"]),
             cell(f'<a href="{rid}/">{rid}</a>', rid, raw=True),
             cell(s["name"] or "-", cls="wrap"), cell(", ".join(s["tags"] or []) or "-", cls="wrap"),
             cell(format_changed(changed(r)) or "-", cls="wrap"), cell(metric),
             cell(_num(final), final if final is not None else ""), cell(_num(best), best if best is not None else ""),
             cell(f"{s['epochs_done'] or 0}/{s['epochs'] or '?'}", s["epochs_done"] or 0),
             cell(format_duration(s["duration_s"]), s["duration_s"] if s["duration_s"] is not None else ""),
             cell((s["start_utc"] or "")[:19].replace("T", " "), cls="wrap"), cell(parent, s["parent"] or "", raw=True),
             cell(curves(experiments / rid, metric), raw=True), cell(reports(experiments / rid), raw=True, cls="wrap"),
             cell(notes[:80] + ("..." if len(notes) > 80 else ""), cls="notes")]
    title = f' title="{html.escape(notes)}"' if notes else ""
    return f'<tr id="run-{rid}"{title}>{"".join(cells)}</tr>'


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def curves(folder: Path, metric: str, width: int = 110, height: int = 34) -> str:
    """The first two loss columns (blue, orange, one scale) and the headline metric (green, its own
    scale) per epoch, as an inline SVG; a link to curves.png when the run drew one."""
    rows = read_metrics(folder)
    losses = [k for k in dict.fromkeys(k for r in rows for k in r) if k.endswith("loss") and k != metric][:2]
    series = [*zip(losses, ("#1f77b4", "#ff7f0e")), (metric, "#2ca02c")]
    lines = []
    loss = [r[k] for r in rows for k in losses if k in r]
    for key, color in series:
        points = [(r["epoch"], r[key]) for r in rows if key in r and "epoch" in r]
        if len(points) < 2:
            continue
        values = loss if key in losses else [v for _, v in points]
        lo, hi = min(values), max(values)
        x0, x1 = points[0][0], points[-1][0]
        xy = " ".join(f"{(e - x0) / ((x1 - x0) or 1) * (width - 4) + 2:.1f},"
                      f"{height - 2 - (v - lo) / ((hi - lo) or 1) * (height - 4):.1f}" for e, v in points)
        lines.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{xy}"/>')
    png = f' <a href="{folder.name}/curves.png">png</a>' if (folder / "curves.png").exists() else ""
    if not lines:
        return png.strip() or "-"
    last = rows[-1]
    tip = html.escape(", ".join(f"{k} {last[k]:.4g}" for k, _ in series if k in last) + f" (epoch {last.get('epoch')})")
    return f'<svg width="{width}" height="{height}" role="img"><title>{tip}</title>{"".join(lines)}</svg>{png}'


def reports(folder: Path) -> str:
    """Links to the A/B reports written under the run's inference/ folder."""
    found = sorted((folder / "inference").glob("compare_*.md")) if (folder / "inference").is_dir() else []
    links = [f'<a href="{folder.name}/inference/{html.escape(p.name)}">{html.escape(p.stem[len("compare_"):])}</a>' for p in found]
    return "<br>".join(links) or "-"


def lineage(runs: list[dict]) -> str:
    """Nested lists of the runs that were continued, from each first run of a lineage down."""
    ids = {r["id"] for r in runs}
    kids: dict[str, list[dict]] = {}
    for r in runs:
        parent = (r.get("parent") or {}).get("id")
        if parent in ids:
            kids.setdefault(parent, []).append(r)
    roots = [r for r in runs if r["id"] in kids and (r.get("parent") or {}).get("id") not in ids]
    if not roots:
        return '<p class="muted">No run has been continued yet.</p>'

    def tree(r: dict) -> str:
        metric = headline(r)
        value = (r.get("metrics") or {}).get(metric)
        label = (f'<a href="#run-{r["id"]}">{r["id"]}</a> <span class="{r.get("status")}">{r.get("status")}</span> '
                 f'{html.escape(r.get("name") or "")} {metric} {_num(value)}')
        below = "".join(tree(k) for k in kids.get(r["id"], []))
        return f"<li>{label}{f'<ul>{below}</ul>' if below else ''}</li>"
    return "<ul>" + "".join(tree(r) for r in roots) + "</ul>"
