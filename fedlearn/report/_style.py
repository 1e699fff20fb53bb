"""The report's stylesheet (inline in the page: the file must stand alone).

Mobile first: grids collapse to one column, wide tables scroll inside their
own box, long hashes wrap, so nothing is wider than a 400 px screen.
"""

__all__ = ["CSS"]

CSS = """
:root{--ink:#1d1d1f;--muted:#5f6368;--line:#dadce0;--ok:#1e7b34;--wait:#a15c00;--bad:#b3261e;
--me:#fff1c9;font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:var(--ink);background:#fff;line-height:1.45}
*{box-sizing:border-box}
body{margin:0}
nav{position:sticky;top:0;z-index:1;background:#f8f9fa;border-bottom:1px solid var(--line);
padding:.4rem 1rem;display:flex;flex-wrap:wrap;gap:.2rem 1rem;font-size:.9rem}
nav a{color:var(--ink);text-decoration:none}
nav a:hover{text-decoration:underline}
main{max-width:1100px;margin:0 auto;padding:0 1rem 2rem}
header h1{font-size:1.5rem;margin:1.2rem 0 .2rem;overflow-wrap:anywhere}
.meta{color:var(--muted);margin:.2rem 0 .6rem}
.state{font-weight:600;text-transform:uppercase;font-size:.8rem;letter-spacing:.04em}
.state-completed{color:var(--ok)}.state-running{color:var(--wait)}.state-failed{color:var(--bad)}
.banner{padding:.6rem .8rem;border-left:4px solid var(--muted);background:#f6f6f6;
overflow-wrap:anywhere}
.banner.failed{border-color:var(--bad);background:#fdecea}
.banner.running{border-color:var(--wait);background:#fff4e0}
.banner.holder{border-color:#d6a100;background:var(--me)}
section{margin-top:2rem}
h2{font-size:1.2rem;margin:0 0 .3rem;border-bottom:1px solid var(--line);padding-bottom:.2rem}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
.caption{color:var(--muted);max-width:52rem;margin:.2rem 0 .8rem}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:.8rem}
.stat{border:1px solid var(--line);border-radius:6px;padding:.6rem .7rem;min-width:0}
.stat .value{font-size:1.45rem;font-weight:650;font-variant-numeric:tabular-nums;
overflow-wrap:anywhere}
.stat .label{font-weight:600;font-size:.85rem}
.stat .note{color:var(--muted);font-size:.8rem;overflow-wrap:anywhere}
.stat.warn .value{color:var(--bad)}
.stat.me{background:var(--me)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));
gap:1rem;align-items:start}
figure{margin:0;min-width:0}
code.short{white-space:nowrap}
.refusals li{margin:.25rem 0}
.chart-box.half{max-width:560px}
svg.chart{width:100%;height:auto;display:block;font-family:inherit}
svg .tick{font-size:13px;fill:#444}
svg .axis-label{font-size:13px;fill:#333}
svg .grid{stroke:#ececec;stroke-width:1}
svg .axis{stroke:#888;stroke-width:1}
svg .skipped{fill:#e6e6e6}
svg .rule{stroke-width:1.5;stroke-dasharray:5 4}
svg .line polyline{stroke-width:2}
svg .line.dashed polyline{stroke-dasharray:6 4}
svg .line.emphasis polyline{stroke-width:3.5}
svg .line.muted{opacity:.6}
svg .bar rect{fill:#4e79a7}
svg .bar.emphasis rect{fill:#d62728}
svg .value{font-size:13px;fill:#222}
.legend{list-style:none;padding:0;margin:.3rem 0 0;display:flex;flex-wrap:wrap;gap:.2rem .9rem;
font-size:.82rem;color:var(--muted)}
.legend li{display:flex;align-items:center;gap:.35rem;overflow-wrap:anywhere}
.key{display:inline-block;width:18px;height:0;border-top:3px solid var(--c);flex:none}
.key.dashed{border-top-style:dashed}
.key.band{height:10px;border:0;background:var(--c)}
.table-wrap{overflow-x:auto;max-width:100%;margin:.5rem 0}
table{border-collapse:collapse;font-size:.88rem}
th,td{padding:.3rem .55rem;border-bottom:1px solid var(--line);text-align:left;
vertical-align:top}
thead th{background:#f8f9fa;white-space:nowrap}
table.num td{font-variant-numeric:tabular-nums}
td:first-child{white-space:nowrap}
tr.me td{background:var(--me);font-weight:600}
tr.skipped td{background:#f3f3f3}
tr.total td{border-top:2px solid var(--ink)}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.82em}
code.hash{overflow-wrap:anywhere;word-break:break-all}
td code.hash{display:inline-block;max-width:24ch}
pre{background:#f6f8fa;padding:.6rem .8rem;border-radius:6px;white-space:pre-wrap;
overflow-wrap:anywhere;margin:.4rem 0 .8rem}
.badge{font-weight:600;white-space:nowrap}
.badge.ok{color:var(--ok)}.badge.wait{color:var(--wait)}.badge.bad{color:var(--bad)}
.badge.none{color:var(--muted)}
.reason{overflow-wrap:anywhere}
td .reason{display:inline-block;min-width:18ch;max-width:60ch}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;font-size:.88rem}
.facts dt{font-weight:600}.facts dd{margin:0;min-width:0}
.config{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,280px),1fr));
gap:.8rem}
.config-card{border:1px solid var(--line);border-radius:6px;padding:.2rem .6rem .5rem;
min-width:0;overflow-x:auto}
.config-card h3{margin:.4rem 0}
.config-card th{font-weight:500;color:var(--muted)}
.config-card td{overflow-wrap:anywhere}
.methods{padding-left:1.2rem}
.empty{color:var(--muted);font-style:italic}
footer{max-width:1100px;margin:0 auto;padding:1rem;color:var(--muted);font-size:.8rem;
border-top:1px solid var(--line)}
@media (max-width:520px){main{padding:0 .6rem 2rem}header h1{font-size:1.25rem}
.stat .value{font-size:1.2rem}.facts{grid-template-columns:1fr}}
"""
