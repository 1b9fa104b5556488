// A library linked after libcoproc, with a static object built at run time: a fresh
// image's target must find it constructed (test_main_guard).
#pragma once

// 42 once the library's statics are constructed, 1 before.
int late_static_value();
