// report.html of a study: one static page (no scripts from elsewhere, no
// server), images by relative path next to it. Each <img> marks itself
// data-loaded="1" on load, or data-broken="1" and a "BROKEN IMAGE" title on
// error, so a headless browser's --dump-dom shows whether every figure loaded.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "normlab/study.hpp"

namespace normlab {

struct ReportPage {
  std::string name, title;
  bool quick = false;
  std::string intro;                                          // HTML
  std::vector<std::pair<std::string, std::string>> settings;  // name, value (HTML)
  std::vector<std::pair<std::string, std::string>> figures;   // PNG file, caption
  std::vector<std::pair<std::string, std::string>> tables;    // heading, HTML table
  std::vector<Verdict> verdicts;
  std::string paper;  // what the paper itself reports (HTML)
  double seconds = 0, unit_seconds = 0;
  int64_t units = 0, units_cached = 0;
};

// Writes the page atomically. Throws Error if it cannot.
void write_report_html(const std::string& path, const ReportPage& page);

}  // namespace normlab
