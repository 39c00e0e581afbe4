#include "study/study_report.hpp"

#include <omp.h>

#include <cstdio>
#include <ctime>

#include "normlab/atomic_file.hpp"
#include "normlab/build_info.hpp"

namespace normlab {
namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}

std::string seconds_text(double s) {
  char buf[64];
  if (s < 120)
    std::snprintf(buf, sizeof buf, "%.1f s", s);
  else
    std::snprintf(buf, sizeof buf, "%.1f min", s / 60);
  return buf;
}

}  // namespace

void write_report_html(const std::string& path, const ReportPage& p) {
  std::string h =
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>normlab study " +
      esc(p.name) + "</title>\n<style>\n" +
      "body{font-family:sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222}\n"
      "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:.25em "
      ".6em;text-align:left}\nth{background:#eee}img{max-width:100%;border:1px solid #ddd}\n"
      ".yes{color:#060;font-weight:bold}.no{color:#a00;font-weight:bold}figure{margin:1em 0}\n"
      "</style>\n<script>\nfunction imgOk(i){i.setAttribute('data-loaded','1');}\n"
      "function imgBad(i){i.setAttribute('data-broken','1');document.title='BROKEN IMAGE: '+"
      "i.getAttribute('src');var d=document.createElement('p');d.className='no';"
      "d.textContent='missing image: '+i.getAttribute('src');i.parentNode.appendChild(d);}\n"
      "</script></head><body>\n";
  h += "<h1>normlab study " + esc(p.name) + (p.quick ? " (--quick)" : "") + "</h1>\n";
  h += "<p><b>" + esc(p.title) + "</b></p>\n<p>" + p.intro + "</p>\n";

  h += "<h2>Verdicts</h2>\n<table><tr><th>claim</th><th>holds</th><th>numbers</th></tr>\n";
  for (const auto& v : p.verdicts)
    h += "<tr><td>" + esc(v.claim) + "</td><td class=\"" + (v.holds ? "yes\">yes" : "no\">no") +
         "</td><td>" + esc(v.detail) + "</td></tr>\n";
  h += "</table>\n";

  h += "<h2>Figures</h2>\n";
  for (const auto& [file, caption] : p.figures)
    h += "<figure><img src=\"" + esc(file) + "\" alt=\"" + esc(caption) +
         "\" onload=\"imgOk(this)\" onerror=\"imgBad(this)\"><figcaption>" + esc(caption) +
         "</figcaption></figure>\n";

  for (const auto& [heading, table] : p.tables)
    h += "<h2>" + esc(heading) + "</h2>\n" + table + "\n";

  h += "<h2>What the paper reports</h2>\n<p>" + p.paper + "</p>\n";

  h += "<h2>What was run</h2>\n<table>\n";
  for (const auto& [k, v] : p.settings) h += "<tr><th>" + esc(k) + "</th><td>" + v + "</td></tr>\n";
  h += "<tr><th>setting</th><td>" + std::string(p.quick ? "--quick (reduced, for tests)" : "full") +
       "</td></tr>\n";
  char buf[160];
  std::snprintf(buf, sizeof buf, "%lld (%lld reused from runs/)", static_cast<long long>(p.units),
                static_cast<long long>(p.units_cached));
  h += "<tr><th>training runs</th><td>" + std::string(buf) + "</td></tr>\n";
  h += "<tr><th>time</th><td>" + seconds_text(p.seconds) + " this invocation; " +
       seconds_text(p.unit_seconds) + " of training runs in total (summed over runs)</td></tr>\n";
  h += "<tr><th>machine</th><td>" + esc(cpu_model()) + "; " + esc(cpu_isa()) + "; " +
       std::to_string(omp_get_num_procs()) + " cores</td></tr>\n";
  h += "<tr><th>build</th><td>" + esc(build_summary()) + "</td></tr>\n";
  const std::time_t now = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  h += "<tr><th>written</th><td>" + std::string(buf) + "</td></tr>\n</table>\n";
  h += "<p>Data: CSV files beside this page (curves.csv: every recorded point of every run; "
       "runs/: one directory per training run).</p>\n</body></html>\n";
  write_file_atomic(path, h);
}

}  // namespace normlab
