// Running parallel_for on the process's OpenMP team when one is loaded (torch's libgomp, usually).
//
// Why: torch's OpenMP workers spin-wait for a while after every torch op (libgomp's default policy).
// On a machine with as many cores as threads, a separate pool of ours then fights those spinners for
// the same cores, and a two-thread kernel runs little faster than one thread. Handing our chunks to
// the OpenMP team instead lets the thread that is spinning anyway pick them up at once.
//
// The extension stays torch-free and links no OpenMP: the runtime is found among the objects already
// loaded (dl_iterate_phdr) and its GOMP entry points are looked up with dlsym. libomp and Intel's
// libiomp export the same GOMP_parallel ABI, so they work too.
#include "openmp_host.h"
#include "sparseforge/threading.h"

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

namespace sparseforge {
namespace {

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpInt = int (*)();

struct Host {
  GompParallel parallel = nullptr;
  OmpInt in_parallel = nullptr;
  std::string path;
  pid_t pid = 0;  // the process that found it
};

std::mutex g_mu;
Host g_host;                                   // guarded by g_mu until g_found is set, then read-only
std::atomic<bool> g_found{false};
std::atomic<unsigned long long> g_seen_adds{~0ull};  // dlpi_adds at the last unsuccessful search

bool is_openmp_runtime(const char* name) {
  const char* base = std::strrchr(name, '/');
  base = base ? base + 1 : name;
  return std::strncmp(base, "libgomp", 7) == 0 || std::strncmp(base, "libomp", 6) == 0 ||
         std::strncmp(base, "libiomp", 7) == 0;
}

struct Search {
  unsigned long long adds = 0;
  std::string path;
};

int visit(struct dl_phdr_info* info, size_t, void* data) {
  auto* s = static_cast<Search*>(data);
  s->adds = info->dlpi_adds;
  if (s->path.empty() && info->dlpi_name && is_openmp_runtime(info->dlpi_name)) s->path = info->dlpi_name;
  return 0;
}

unsigned long long current_adds() {
  unsigned long long adds = 0;
  dl_iterate_phdr([](struct dl_phdr_info* info, size_t, void* data) {
    *static_cast<unsigned long long*>(data) = info->dlpi_adds;
    return 1;  // the counter is the same in every entry: stop after the first
  }, &adds);
  return adds;
}

const Host* find_host() {
  if (g_found.load(std::memory_order_acquire)) return &g_host;
  // Searching walks every loaded object; redo it only after something new was loaded (import torch).
  const unsigned long long adds = current_adds();
  if (adds == g_seen_adds.load(std::memory_order_relaxed)) return nullptr;
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_found.load(std::memory_order_acquire)) return &g_host;
  Search s;
  dl_iterate_phdr(visit, &s);
  if (!s.path.empty()) {
    // RTLD_NOLOAD: take a reference to the copy already in the process, never load a second runtime.
    if (void* h = dlopen(s.path.c_str(), RTLD_LAZY | RTLD_NOLOAD)) {
      auto par = reinterpret_cast<GompParallel>(dlsym(h, "GOMP_parallel"));
      auto inpar = reinterpret_cast<OmpInt>(dlsym(h, "omp_in_parallel"));
      if (par && inpar) {
        g_host.parallel = par;
        g_host.in_parallel = inpar;
        g_host.path = s.path;
        g_host.pid = getpid();
        g_found.store(true, std::memory_order_release);
        return &g_host;
      }
    }
  }
  g_seen_adds.store(s.adds, std::memory_order_relaxed);
  return nullptr;
}

// SPARSEFORGE_THREADING=pool|openmp|auto (default auto), read on every call like SPARSEFORGE_ISA so a
// benchmark can compare both in one process.
enum class Mode { kAuto, kPool, kOpenMP };

Mode mode() {
  const char* env = std::getenv("SPARSEFORGE_THREADING");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return Mode::kAuto;
  if (std::strcmp(env, "pool") == 0) return Mode::kPool;
  if (std::strcmp(env, "openmp") == 0) return Mode::kOpenMP;
  throw std::invalid_argument(std::string("SPARSEFORGE_THREADING must be auto, pool or openmp, got '") + env + "'");
}

}  // namespace

bool openmp_host_run(void (*fn)(void*), void* data, int threads) {
  const Mode m = mode();
  if (m == Mode::kPool) return false;
  const Host* h = find_host();
  if (h == nullptr) {
    if (m == Mode::kOpenMP)
      throw std::runtime_error("SPARSEFORGE_THREADING=openmp, but no OpenMP runtime is loaded in this process");
    return false;
  }
  // libgomp keeps its thread pool across fork() without the threads: a child must not touch the team.
  if (h->pid != getpid()) return false;
  // Inside someone else's parallel region a nested team would be serialised: let the caller decide.
  if (h->in_parallel()) return false;
  h->parallel(fn, data, static_cast<unsigned>(threads), 0);
  return true;
}

std::string openmp_host_name() {
  const Host* h = find_host();
  if (h == nullptr) return "";
  return h->path;
}

std::string threading_backend() {
  const Mode m = mode();
  if (m == Mode::kPool) return "pool";
  if (find_host() != nullptr) return "openmp";
  return m == Mode::kOpenMP ? "openmp (no runtime loaded)" : "pool";
}

}  // namespace sparseforge
