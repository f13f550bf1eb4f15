"""The explorer's HTML page: style and script inline, data loaded from `explorer/` beside it.

The script is `explorer.js` next to this module (shipped as package data), put into the page
so the page is one file plus its data. DOM contract (tests and users' scripts rely on it):
each listed query carries `data-query` (its id); each shown response `data-response` (its
analysis row), `data-deployment`, `data-condition` and `data-class`; the search box is the
page's `input[type=search]`.
"""

from __future__ import annotations

import html
from pathlib import Path

CSS = """
*{box-sizing:border-box}body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;
line-height:1.4;font-size:14px}header{padding:10px 20px;border-bottom:1px solid #ddd;background:#fafafa}
header h1{font-size:1.2em;margin:0}header .sub{color:#666;font-size:.9em}
#controls{display:flex;flex-wrap:wrap;gap:8px;align-items:center;padding:8px 20px;border-bottom:1px solid #eee}
#controls input[type=search]{width:320px;padding:5px 8px;font-size:1em}#controls select{padding:4px}
#chip{background:#eef4ff;border:1px solid #bcd;border-radius:12px;padding:2px 10px;display:none}
#main{display:grid;grid-template-columns:minmax(420px,38%) 1fr;height:calc(100vh - 100px)}
#list{overflow:auto;border-right:1px solid #ddd}#detail{overflow:auto;padding:10px 18px}
table{border-collapse:collapse;width:100%;font-size:.85em}th,td{padding:4px 6px;border-bottom:1px solid #eee;
text-align:right;vertical-align:top}th{position:sticky;top:0;background:#f0f0f0;cursor:pointer;user-select:none}
td.t,th.t{text-align:left}tr[data-query]{cursor:pointer}tr[data-query]:hover{background:#f5f8ff}
tr.sel{background:#e6efff!important}.muted{color:#777}.prompt{font-size:1.1em;background:#f6f6f6;padding:8px 12px;
border-left:4px solid #89a;margin:6px 0 10px}.tabs{display:flex;gap:4px;margin:10px 0;border-bottom:1px solid #ccc}
.tabs button{border:1px solid #ccc;border-bottom:none;background:#f3f3f3;padding:5px 12px;cursor:pointer;
border-radius:5px 5px 0 0;font-size:.95em}.tabs button.on{background:#fff;font-weight:600;position:relative;top:1px}
.cols{display:grid;gap:10px;align-items:start}.col h4{margin:4px 0;padding:4px 8px;border-radius:4px;color:#fff}
.class{border:1px solid #ddd;border-radius:6px;margin:6px 0;padding:4px 6px;background:#fcfcfc}
.class>.h{font-size:.8em;color:#555;margin-bottom:3px}.resp{border-top:1px dashed #e2e2e2;padding:4px 2px}
.resp:first-of-type{border-top:none}.resp .tx{white-space:pre-wrap;word-wrap:break-word;max-height:11em;overflow:auto}
.resp .meta{font-size:.78em;color:#666;margin-top:2px}.resp.hl{background:#fff6d5}a{color:#1a55b0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px;border:2px solid #89a;border-radius:8px;padding:8px;
margin:8px 0;background:#fbfcff}.pair pre{white-space:pre-wrap;word-wrap:break-word;margin:0;font-family:inherit}
.pair .h{grid-column:1/3;font-size:.9em}mark{background:#ffd45e}.warnbox{color:#8a5a00;font-size:.9em}
#map svg{border:1px solid #ddd;background:#fff}#tip{position:fixed;pointer-events:none;max-width:420px;
background:#222;color:#fff;padding:6px 8px;border-radius:5px;font-size:.82em;display:none;z-index:9;
white-space:pre-wrap}.legend span{display:inline-block;margin-right:12px}.sw{display:inline-block;width:11px;
height:11px;border-radius:6px;margin-right:4px;vertical-align:middle}h3{margin:14px 0 4px;font-size:1em}
"""


def script() -> str:
    return (Path(__file__).with_name("explorer.js")).read_text(encoding="utf-8")


def page(study: str) -> str:
    """The whole explorer page of a study (its data: `explorer/index.js` and `explorer/q/*.js`)."""
    name = html.escape(study)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request: the page asks for its own files only
        f"<title>hivemind explorer: {name}</title><style>{CSS}</style></head><body>"
        f'<header><h1>hivemind explorer: {name}</h1><div class="sub" id="sub">loading&hellip; '
        "(the data files are in the <code>explorer/</code> folder beside this page)</div></header>"
        '<div id="controls"><input type="search" id="search" placeholder="Search queries (text, id, category)&hellip;" '
        'aria-label="search queries">'
        '<label>deployment <select id="fdep"><option value="">all</option></select></label>'
        '<label>condition <select id="fcond"><option value="">all</option></select></label>'
        '<label>category <select id="fcat"><option value="">all</option></select></label>'
        '<span id="count" class="muted"></span><span id="chip"></span>'
        '<a href="report.html" style="margin-left:auto">&larr; report</a></div>'
        '<div id="main"><div id="list"></div><div id="detail"><p class="muted">Choose a query on the left '
        '(click a column heading to sort).</p></div></div><div id="tip"></div>'
        f"<script>{script()}</script></body></html>\n"
    )
