"""Draws a Grafana dashboard's panels into one PNG with matplotlib (Agg), from the same PromQL run against a
Prometheus (query_range): timeseries as lines, heatmaps from their `le` buckets, stats as their last value. Laid out
on the dashboard's own 24-column grid, each panel titled as in the JSON. Used by check.py --render for README's
screenshot (docs/images/dashboard.png)."""

import datetime
import math

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.gridspec import GridSpec  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

UNIT_SUFFIX = {"rowsps": " rows/s", "reqps": " req/s", "ops": "/s"}


def scaled(value, unit):
    """A value as Grafana would print it in `unit` (the few units the dashboard uses)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if unit == "bytes":
        for suffix, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if abs(value) >= factor:
                return "%.3g %s" % (value / factor, suffix)
        return "%.0f B" % value
    if unit == "s":
        if value == 0:
            return "0 s"
        if abs(value) < 1e-3:
            return "%.3g µs" % (value * 1e6)
        if abs(value) < 1:
            return "%.3g ms" % (value * 1e3)
        if abs(value) >= 3600:
            return "%.3g h" % (value / 3600)
        if abs(value) >= 120:
            return "%.3g min" % (value / 60)
        return "%.3g s" % value
    if unit == "percentunit":
        return "%.3g%%" % (value * 100)
    text = "%.3g" % value if abs(value) < 1e5 else "%.3gk" % (value / 1e3)
    return text + UNIT_SUFFIX.get(unit, "")


def legend(template, labels):
    text = template or "{{__name__}}"
    for name, value in labels.items():
        text = text.replace("{{%s}}" % name, value).replace("{{ %s }}" % name, value)
    return text


def points(series):
    times, values = [], []
    for timestamp, value in series["values"]:
        times.append(datetime.datetime.fromtimestamp(float(timestamp)))
        number = float(value)
        values.append(number if math.isfinite(number) else float("nan"))
    return times, values


def le_value(text):
    return math.inf if text in ("+Inf", "Inf") else float(text)


def draw_timeseries(axis, panel, results):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit")
    mappings = {}
    for mapping in defaults.get("mappings", []):
        if mapping.get("type") == "value":
            for value, option in mapping.get("options", {}).items():
                mappings[float(value)] = option.get("text", value)
    drawn = 0
    for target, series_list in results:
        for series in series_list:
            times, values = points(series)
            if not any(math.isfinite(v) for v in values):
                continue
            dashed = "limit" in legend(target.get("legendFormat"), series["metric"]) or \
                "max_size" in legend(target.get("legendFormat"), series["metric"])
            # The first series is drawn wider, so one that another covers exactly (memory in use and open batches)
            # still shows.
            axis.plot(times, values, linewidth=2.6 if drawn == 0 and len(results) > 1 else 1.3,
                      linestyle="--" if dashed else "-",
                      label=legend(target.get("legendFormat"), series["metric"]))
            drawn += 1
    if mappings:
        ticks = sorted(mappings)
        axis.set_yticks(ticks)
        axis.set_yticklabels([mappings[t] for t in ticks])
        axis.set_ylim(min(ticks) - 0.15, max(ticks) + 0.15)
    elif defaults.get("custom", {}).get("scaleDistribution", {}).get("type") == "log":
        base = defaults["custom"]["scaleDistribution"].get("log", 2)
        axis.set_yscale("log", base=base)
        if unit == "bytes" and base == 2:
            axis.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=1024, subs=(1, 8, 64)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: scaled(value, unit)))
        axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: scaled(value, unit)))
        low, high = axis.get_ylim()
        axis.set_ylim(min(0, low), high if high > 0 else 1)
    if drawn:
        axis.legend(fontsize=6.5, loc="upper left", ncol=2 if drawn > 4 else 1, framealpha=0.7)
    else:
        axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes, color="grey")


def draw_heatmap(axis, panel, results):
    buckets = {}
    times = None
    for _, series_list in results:
        for series in series_list:
            le = series["metric"].get("le")
            if le is None:
                continue
            series_times, values = points(series)
            times = times or series_times
            buckets[le_value(le)] = dict(zip(series_times, values))
    if not buckets or not times:
        axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes, color="grey")
        return
    bounds = sorted(buckets)
    # Cumulative bucket rates to per-bucket rates.
    rows = []
    for index, bound in enumerate(bounds):
        row = []
        for moment in times:
            value = buckets[bound].get(moment, float("nan"))
            below = buckets[bounds[index - 1]].get(moment, 0.0) if index else 0.0
            difference = value - below if math.isfinite(value) and math.isfinite(below) else float("nan")
            row.append(max(difference, 0.0) if math.isfinite(difference) else float("nan"))
        rows.append(row)
    used = [i for i, row in enumerate(rows) if any(v > 0 for v in row if math.isfinite(v))]
    if not used:
        axis.text(0.5, 0.5, "no observations", ha="center", va="center", transform=axis.transAxes, color="grey")
        return
    first, last = max(used[0] - 1, 0), min(used[-1] + 1, len(rows) - 1)
    shown = rows[first:last + 1]
    unit = panel.get("options", {}).get("yAxis", {}).get("unit", "s")
    labels = ["≤ " + (scaled(bounds[i], unit) if math.isfinite(bounds[i]) else "+Inf")
              for i in range(first, last + 1)]
    x = mdates.date2num(times)
    if len(x) > 1:
        edges = [x[0] - (x[1] - x[0]) / 2] + [(a + b) / 2 for a, b in zip(x, x[1:])] + [x[-1] + (x[-1] - x[-2]) / 2]
    else:
        edges = [x[0] - 1e-5, x[0] + 1e-5]
    mesh = axis.pcolormesh(edges, range(len(shown) + 1), shown, cmap="Oranges", shading="flat")
    axis.set_yticks([i + 0.5 for i in range(len(shown))])
    axis.set_yticklabels(labels, fontsize=6.5)
    axis.xaxis_date()
    colorbar = axis.figure.colorbar(mesh, ax=axis, pad=0.01, fraction=0.025)
    colorbar.ax.tick_params(labelsize=6)
    axis.text(1.0, 1.02, "observations/s", transform=axis.transAxes, ha="right", va="bottom", fontsize=6.5)


def draw_stat(axis, panel, results):
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    name_mode = panel.get("options", {}).get("textMode") == "name"
    calc = (panel.get("options", {}).get("reduceOptions", {}).get("calcs") or ["lastNotNull"])[0]
    texts = []
    for target, series_list in results:
        for series in series_list:
            _, values = points(series)
            finite = [v for v in values if math.isfinite(v)]
            if not finite:
                continue
            name = legend(target.get("legendFormat"), series["metric"])
            value = sum(finite) / len(finite) if calc == "mean" else max(finite) if calc == "max" else finite[-1]
            texts.append(name if name_mode else scaled(value, unit))
    axis.set_axis_off()
    axis.text(0.5, 0.45, "\n".join(texts) if texts else "no data", ha="center", va="center", fontsize=17,
              fontweight="bold", color="#2b7a2b" if texts else "grey", transform=axis.transAxes)
    if calc != "lastNotNull" and not name_mode:
        axis.text(0.5, 0.0, "(%s over the range)" % calc, ha="center", va="bottom", fontsize=7, color="grey",
                  transform=axis.transAxes)


def render(dashboard, prometheus, substitute, start, end, path):
    panels = [p for p in dashboard.get("panels", []) if p.get("targets")]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(20, bottom * 0.42 + 1.2), dpi=90)
    grid = GridSpec(bottom, 24, figure=figure, hspace=0.6, wspace=1.6, top=1 - 0.9 / (bottom * 0.42 + 1.2),
                    bottom=0.02, left=0.04, right=0.985)
    span = datetime.timedelta(seconds=end - start)
    figure.suptitle("%s — %s to %s (%d s), every table" % (
        dashboard.get("title", "dashboard"), datetime.datetime.fromtimestamp(start).strftime("%Y-%m-%d %H:%M:%S"),
        datetime.datetime.fromtimestamp(end).strftime("%H:%M:%S"), span.total_seconds()), fontsize=15)
    for panel in panels:
        position = panel["gridPos"]
        axis = figure.add_subplot(grid[position["y"] + 1:position["y"] + position["h"],
                                       position["x"]:position["x"] + position["w"]])
        results = [(target, prometheus.query_range(substitute(target["expr"]), start, end))
                   for target in panel["targets"] if target.get("expr")]
        axis.set_title(panel.get("title", ""), fontsize=10, loc="left", fontweight="bold")
        if panel["type"] == "stat":
            draw_stat(axis, panel, results)
            continue
        if panel["type"] == "heatmap":
            draw_heatmap(axis, panel, results)
        else:
            draw_timeseries(axis, panel, results)
            axis.grid(alpha=0.3)
        axis.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        axis.tick_params(labelsize=7)
    figure.savefig(path)
    plt.close(figure)
