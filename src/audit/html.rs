//! The human-readable audit report: one self-contained HTML file (inline
//! CSS and SVG, no scripts, no external assets) with a summary, the
//! failures table and two charts — consent per purpose, and records per data
//! class and KEK version. Every string is HTML-escaped; the report holds no
//! personal data to begin with.

use std::fmt::Write;

use super::verify::Report;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A horizontal bar chart: `(label, value, colour)` rows.
fn bar_chart(title: &str, rows: &[(String, u64, &str)]) -> String {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let (label_w, bar_w, row_h) = (220.0, 360.0, 26.0);
    let height = 40.0 + row_h * rows.len() as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{t}" width="{w}" height="{height}" viewBox="0 0 {w} {height}">
<text x="0" y="18" class="chart-title">{t}</text>"#,
        t = esc(title),
        w = label_w + bar_w + 80.0
    );
    for (i, (label, value, colour)) in rows.iter().enumerate() {
        let y = 32.0 + row_h * i as f64;
        let len = bar_w * (*value as f64) / (max as f64);
        let _ = write!(
            svg,
            r#"<text x="0" y="{ty}" class="label">{l}</text><rect x="{label_w}" y="{y}" width="{len:.1}" height="18" fill="{colour}"/><text x="{vx:.1}" y="{ty}" class="value">{value}</text>"#,
            ty = y + 14.0,
            l = esc(label),
            vx = label_w + len + 6.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

pub fn render(report: &Report, signature_hex: Option<&str>, key_id: Option<&str>) -> String {
    let status = if report.verified {
        r#"<p class="ok">Everything verifies.</p>"#.to_owned()
    } else {
        format!(
            r#"<p class="bad">{} failure(s) found.</p>"#,
            report.failure_count
        )
    };
    let mut consent_rows = Vec::new();
    for (purpose, n) in &report.consent.consenting {
        consent_rows.push((format!("{purpose}: consents"), *n, "#2e7d32"));
        let no = report
            .consent
            .not_consenting
            .get(purpose)
            .copied()
            .unwrap_or(0);
        consent_rows.push((format!("{purpose}: does not"), no, "#9e9e9e"));
    }
    let mut kek_rows = Vec::new();
    for (class, versions) in &report.totals.kek_versions {
        for (version, n) in versions {
            kek_rows.push((format!("{class} KEK v{version}"), *n, "#1565c0"));
        }
    }
    let mut failures = String::new();
    if report.failures.is_empty() {
        failures.push_str("<p>None.</p>");
    } else {
        failures.push_str("<table><thead><tr><th>table</th><th>record</th><th>what failed</th></tr></thead><tbody>");
        for f in &report.failures {
            let _ = write!(
                failures,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(&f.table),
                esc(&f.record_id),
                esc(&f.what)
            );
        }
        failures.push_str("</tbody></table>");
        if (report.failures.len() as u64) < report.failure_count {
            let _ = write!(
                failures,
                "<p>… and {} more (see the JSON report).</p>",
                report.failure_count - report.failures.len() as u64
            );
        }
    }
    let mut totals = String::from("<table><tbody>");
    for (table, n) in &report.totals.records {
        let _ = write!(
            totals,
            "<tr><td>{}</td><td class=\"num\">{n}</td></tr>",
            esc(table)
        );
    }
    totals.push_str("</tbody></table>");
    let chain = if report.access_log.intact {
        format!("intact ({} entries)", report.access_log.entries)
    } else {
        format!(
            "BROKEN: {}",
            esc(report.access_log.failure.as_deref().unwrap_or(""))
        )
    };
    let signature = match (signature_hex, key_id) {
        (Some(sig), Some(key)) => format!(
            "<p>This page is not signed. It shows the JSON report written beside it, whose Ed25519 signature (key <code>{}</code>) is <code class=\"sig\">{}</code>: verify that file, not this page.</p>",
            esc(key),
            esc(sig)
        ),
        _ => String::new(),
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>checkoutd audit report {generated}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }}
h1 {{ font-size: 1.6rem; }} h2 {{ font-size: 1.2rem; margin-top: 2rem; }}
.ok {{ color: #2e7d32; font-weight: bold; font-size: 1.2rem; }}
.bad {{ color: #c62828; font-weight: bold; font-size: 1.2rem; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
.num {{ text-align: right; }} code.sig {{ word-break: break-all; }}
.chart-title {{ font-weight: bold; font-size: 14px; }} .label, .value {{ font-size: 12px; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }}
</style></head>
<body>
<h1>checkoutd audit report</h1>
{status}
<dl>
<dt>Generated</dt><dd>{generated}</dd>
<dt>Orders checked</dt><dd id="orders-checked">{orders}</dd>
<dt>Records checked</dt><dd>{records}</dd>
<dt>Customers</dt><dd>{customers}</dd>
<dt>Orders under a legal hold</dt><dd id="legal-holds">{holds}</dd>
<dt>Access log</dt><dd>{chain}</dd>
</dl>
{signature}
<h2>Failures</h2>
{failures}
<h2>Consent per purpose (customers, latest checkout)</h2>
{consent_chart}
<h2>Records per data class and key version</h2>
{kek_chart}
<h2>Rows per table</h2>
{totals}
</body></html>
"#,
        generated = esc(&report.generated_at),
        orders = report.orders_checked,
        records = report.records_checked,
        customers = report.consent.customers,
        holds = report.legal_holds,
        consent_chart = bar_chart("Consent per purpose", &consent_rows),
        kek_chart = bar_chart("Records per KEK version", &kek_rows),
    )
}
