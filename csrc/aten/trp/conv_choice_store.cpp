// The store of trp/conv_choice_store.h and its ops (schemas in csrc/ops.cpp).
//
// The file: one line per choice, "trp-conv-choice-v1 <TAB> key <TAB> impl <TAB> details", in the
// order the choices were made; a later line for the same key wins (two processes may measure
// the same problem at once: each appends its line with one write). Lines that do not parse are
// skipped. Reading and writing failures are warnings: the choice still holds for the process.
#include "trp/conv_choice_store.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>

namespace trp {
namespace {

constexpr const char* kTag = "trp-conv-choice-v1";

struct Choice {
  std::string impl, details, origin;  // origin: "measured" in this process, or "file"
};

class Store {
 public:
  std::optional<std::string> lookup(const std::string& key) {
    const std::lock_guard<std::mutex> lock(mutex_);
    load_file();
    const auto it = choices_.find(key);
    if (it == choices_.end()) return std::nullopt;
    return it->second.impl;
  }

  void store(const std::string& key, const std::string& impl, const std::string& details) {
    const std::lock_guard<std::mutex> lock(mutex_);
    keep(key, {impl, details, "measured"});
    if (path_.empty()) return;
    std::error_code error;
    const std::filesystem::path parent = std::filesystem::path(path_).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, error);
    std::ostringstream line;
    line << kTag << '\t' << key << '\t' << impl << '\t' << details << '\n';
    std::ofstream file(path_, std::ios::app);
    file << line.str();
    file.flush();
    if (!file) TORCH_WARN("could not append the conv choice to ", path_);
  }

  void set_file(std::optional<std::string> path) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const std::string next = path.value_or("");
    if (next == path_) return;
    path_ = next;
    loaded_ = false;  // read when first needed
  }

  std::optional<std::string> file() {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (path_.empty()) return std::nullopt;
    return path_;
  }

  void clear(bool remove_file) {
    const std::lock_guard<std::mutex> lock(mutex_);
    choices_.clear();
    order_.clear();
    loaded_ = false;
    generation_.fetch_add(1, std::memory_order_relaxed);
    if (remove_file && !path_.empty()) {
      std::error_code error;
      std::filesystem::remove(path_, error);
      TORCH_CHECK(!error, "could not remove ", path_, ": ", error.message());
    }
  }

  // "origin <TAB> key <TAB> impl <TAB> details", one per key, in the order first kept.
  std::vector<std::string> records() {
    const std::lock_guard<std::mutex> lock(mutex_);
    load_file();
    std::vector<std::string> out;
    for (const std::string& key : order_) {
      const Choice& c = choices_.at(key);
      out.push_back(c.origin + '\t' + key + '\t' + c.impl + '\t' + c.details);
    }
    return out;
  }

  int64_t generation() const { return generation_.load(std::memory_order_relaxed); }

 private:
  void keep(const std::string& key, Choice choice) {
    if (choices_.find(key) == choices_.end()) order_.push_back(key);
    choices_[key] = std::move(choice);
  }

  void load_file() {
    if (loaded_ || path_.empty()) return;
    loaded_ = true;
    std::ifstream file(path_);
    if (!file) return;  // no file yet: nothing measured with this build
    std::string line;
    while (std::getline(file, line)) {
      std::vector<std::string> fields;
      std::istringstream split(line);
      for (std::string field; std::getline(split, field, '\t');) fields.push_back(field);
      if (fields.size() != 4 || fields[0] != kTag || fields[1].empty() || fields[2].empty()) {
        continue;
      }
      // A choice this process measured since (after a clear that kept the file) stands.
      const auto it = choices_.find(fields[1]);
      if (it != choices_.end() && it->second.origin == "measured") continue;
      keep(fields[1], {fields[2], fields[3], "file"});
    }
  }

  std::mutex mutex_;
  std::string path_;
  bool loaded_ = false;
  std::unordered_map<std::string, Choice> choices_;
  std::vector<std::string> order_;
  std::atomic<int64_t> generation_{0};
};

Store& store() {
  static Store instance;
  return instance;
}

void set_conv_choice_file_op(std::optional<c10::string_view> path) {
  store().set_file(path.has_value() ? std::optional<std::string>(std::string(*path))
                                    : std::nullopt);
}

std::optional<std::string> conv_choice_file_op() { return store().file(); }

void clear_conv_choices_op(bool remove_file) { store().clear(remove_file); }

std::vector<std::string> conv_choice_records_op() { return store().records(); }

std::optional<std::string> stored_conv_choice_op(c10::string_view key) {
  return stored_conv_choice(std::string(key));
}

void store_conv_choice_op(c10::string_view key, c10::string_view impl,
                          c10::string_view details) {
  for (const c10::string_view field : {key, impl, details}) {
    TORCH_CHECK_VALUE(field.find_first_of("\t\n") == c10::string_view::npos,
                      "a conv choice's fields may not hold tabs or newlines, got '", field, "'");
  }
  store_conv_choice(std::string(key), std::string(impl), std::string(details));
}

int64_t conv_choice_generation_op() { return conv_choice_generation(); }

}  // namespace

std::optional<std::string> stored_conv_choice(const std::string& key) {
  return store().lookup(key);
}

void store_conv_choice(const std::string& key, const std::string& impl,
                       const std::string& details) {
  store().store(key, impl, details);
}

int64_t conv_choice_generation() { return store().generation(); }

// No tensor arguments: CompositeExplicitAutograd is the kernel every dispatch reaches.
TORCH_LIBRARY_IMPL(trp, CompositeExplicitAutograd, m) {
  m.impl("set_conv_choice_file", &set_conv_choice_file_op);
  m.impl("conv_choice_file", &conv_choice_file_op);
  m.impl("clear_conv_choices", &clear_conv_choices_op);
  m.impl("conv_choice_records", &conv_choice_records_op);
  m.impl("_stored_conv_choice", &stored_conv_choice_op);
  m.impl("_store_conv_choice", &store_conv_choice_op);
  m.impl("_conv_choice_generation", &conv_choice_generation_op);
}

}  // namespace trp
