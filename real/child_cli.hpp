#pragma once
// The child's side of real/child_options.hpp: a subcommand's flags declared from the options'
// field table, the one the parent serialises from.
#include <CLI/CLI.hpp>
#include <type_traits>

#include "real/child_options.hpp"

namespace apiary::real {

template <class Options>
void add_fields(CLI::App* c, Options& o) {
  visit_fields(o, [c](const char* flag, auto& field, const char* help) {
    using T = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<T, bool>)
      c->add_flag(flag, field, help);
    else
      c->add_option(flag, field, help);
  });
}

}  // namespace apiary::real
