// depthrt_embed: run a depthrt bundle from a C++ program by embedding the Python runtime.
//
//   depthrt_embed BUNDLE IMAGE OUT [--backend B] [--precision P] [--repeat N] [--compare]
//                 [--thread] [--own] [--force]
//
// The pattern a C++ host follows (docs/embedding.md has the full contract):
//   1. start the interpreter once, as the Python of the environment depthrt is installed in;
//   2. load the bundle once (depthrt.embed.load);
//   3. per frame, lend the frame's pixels to Python as a read-only NumPy view (no copy), call
//      depthrt.embed.predict_depth, and borrow the float32 depth map it returns (or, with --own,
//      have it copied into a buffer this program owns);
//   4. turn every Python exception into a C++ exception with the same one-line message.
// Build it with scripts/build-cpp-example.

#include <pybind11/embed.h>
#include <pybind11/numpy.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace py = pybind11;
namespace fs = std::filesystem;

#ifndef DEPTHRT_DEFAULT_PYTHON
#define DEPTHRT_DEFAULT_PYTHON ""
#endif

namespace depthrt {

// ------------------------------------------------------------------------------------ errors

// A Python exception as a C++ exception: what() is str(exception), the one-line message depthrt
// writes for users; type() is the Python class name. It holds no Python object, so it may
// outlive the interpreter and cross threads freely.
class Error : public std::runtime_error {
 public:
  Error(std::string type, const std::string& message, bool ours, int exit_code)
      : std::runtime_error(message), type_(std::move(type)), ours_(ours), exit_code_(exit_code) {}
  const std::string& type() const { return type_; }
  bool from_depthrt() const { return ours_; }  // a depthrt.DepthrtError, not a bug
  int exit_code() const { return exit_code_; }

 private:
  std::string type_;
  bool ours_;
  int exit_code_;
};

// Run f() (the GIL must be held) and rethrow a Python exception as depthrt::Error.
template <class F>
auto call(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (py::error_already_set& e) {
    std::string type = "Exception", message;
    bool ours = false;
    int exit_code = 1;
    try {
      type = py::str(e.type().attr("__name__"));
      message = py::str(e.value());
      py::object base = py::module_::import("depthrt.errors").attr("DepthrtError");
      ours = e.matches(base);
      if (ours && py::hasattr(e.value(), "exit_code"))
        exit_code = e.value().attr("exit_code").cast<int>();
    } catch (py::error_already_set&) {
      // str() of the exception failed too (or depthrt itself is not importable): keep the type
    }
    throw Error(type, message.empty() ? type : message, ours, exit_code);
  }
}

// --------------------------------------------------------------------------- the interpreter

// The Python to run as: $DEPTHRT_PYTHON, else $VIRTUAL_ENV/bin/python, else the one this
// program was built with. Starting "as" a venv's python makes CPython read its pyvenv.cfg,
// so sys.prefix and site-packages are the venv's, exactly as for `venv/bin/python`.
std::string python_executable() {
  if (const char* p = std::getenv("DEPTHRT_PYTHON"); p && *p) return p;
  if (const char* v = std::getenv("VIRTUAL_ENV"); v && *v) return (fs::path(v) / "bin" / "python").string();
  return DEPTHRT_DEFAULT_PYTHON;
}

// A venv made by another Python version would load that version's standard library into this
// libpython and fail in obscure ways: refuse it with a message instead.
void check_python_version(const fs::path& exe) {
  for (const fs::path& cfg : {exe.parent_path() / "pyvenv.cfg", exe.parent_path().parent_path() / "pyvenv.cfg"}) {
    std::ifstream in(cfg);
    std::string line;
    while (in && std::getline(in, line)) {
      auto eq = line.find('=');
      if (eq == std::string::npos) continue;
      std::string key = line.substr(0, eq);
      key.erase(key.find_last_not_of(" \t") + 1);
      if (key != "version" && key != "version_info") continue;
      std::string value = line.substr(eq + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      std::string want = std::to_string(PY_MAJOR_VERSION) + "." + std::to_string(PY_MINOR_VERSION) + ".";
      if (value.rfind(want, 0) != 0)
        throw std::runtime_error("the Python environment at '" + exe.string() + "' is Python " + value +
                                 ", but this program was built for Python " + PY_VERSION +
                                 "; point DEPTHRT_PYTHON or VIRTUAL_ENV at a " + want.substr(0, want.size() - 1) +
                                 " environment, or rebuild with scripts/build-cpp-example");
      return;
    }
  }
}

// Starts the interpreter as `python` and stops it when destroyed. Every py::object must be
// gone before that, so create one of these first and the Python objects after it.
class Interpreter {
 public:
  explicit Interpreter(const std::string& python) {
    if (python.empty())
      throw std::runtime_error("no Python to run: set DEPTHRT_PYTHON to the python of the environment "
                               "depthrt is installed in (or activate it, which sets VIRTUAL_ENV)");
    if (!fs::exists(python))
      throw std::runtime_error("Python '" + python + "' does not exist: set DEPTHRT_PYTHON to the python "
                               "of the environment depthrt is installed in");
    check_python_version(python);
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0;
    config.install_signal_handlers = 0;  // signals stay the host's: Ctrl-C ends it as usual
    PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, python.c_str());
    if (PyStatus_Exception(status)) {
      PyConfig_Clear(&config);
      throw std::runtime_error("cannot use '" + python + "' as the Python program name");
    }
    guard_.emplace(&config, 0, nullptr, false);  // clears config
  }

 private:
  std::optional<py::scoped_interpreter> guard_;
};

// ------------------------------------------------------------------------------ the buffers

// An RGB frame in memory this program owns: row-major (H, W, 3) uint8, as a camera or a video
// decoder would hand it over.
struct Frame {
  int height = 0, width = 0;
  std::vector<std::uint8_t> pixels;
};

// A read-only NumPy view over the frame's pixels: no copy. The capsule's destructor does
// nothing, since the frame, not Python, owns the memory. The frame must therefore outlive every
// reference to the view; depthrt keeps none after predict_depth returns, which
// `lend` callers check with ref_count() (see run_frame).
py::array lend(const Frame& frame) {
  py::capsule not_owner(frame.pixels.data(), [](void*) {});
  py::array view(py::dtype::of<std::uint8_t>(),
                 {py::ssize_t(frame.height), py::ssize_t(frame.width), py::ssize_t(3)},
                 {py::ssize_t(frame.width) * 3, py::ssize_t(3), py::ssize_t(1)}, frame.pixels.data(),
                 not_owner);
  view.attr("setflags")(py::arg("write") = false);  // Python may read the frame, never write it
  return view;
}

// A depth map borrowed from the array depthrt returned: `data` points into `array`'s memory
// and is valid exactly as long as `array` is alive. Copying or destroying a DepthMap touches a
// Python reference count, so do either only while holding the GIL.
struct DepthMap {
  py::array_t<float, py::array::c_style> array;
  const float* data = nullptr;
  int height = 0, width = 0;
};

DepthMap borrow_depth(py::object result) {
  if (!py::isinstance<py::array_t<float, py::array::c_style>>(result))
    throw std::runtime_error("depthrt.embed.predict_depth returned " + std::string(py::str(py::type::of(result))) +
                             ", not a C-contiguous float32 array");
  DepthMap depth;
  depth.array = py::reinterpret_steal<py::array_t<float, py::array::c_style>>(result.release());
  if (depth.array.ndim() != 2) throw std::runtime_error("depth map is not 2-D");
  depth.data = depth.array.data();
  depth.height = int(depth.array.shape(0));
  depth.width = int(depth.array.shape(1));
  return depth;
}

// ------------------------------------------------------------------------------- the program

struct Options {
  std::string bundle, image, out, backend = "auto", precision = "fp32";
  int repeat = 1;
  bool compare = false, thread = false, own = false, force = false;
};

const char* kUsage =
    "usage: depthrt_embed BUNDLE IMAGE OUT [--backend auto|trt|ort-cuda|openvino|ort-cpu]\n"
    "                     [--precision fp32|fp16|bf16] [--repeat N] [--compare] [--thread] [--own] [--force]\n"
    "  OUT by extension: .png (16-bit, normalised), .npy or .f32 (raw float32, H x W row-major)\n"
    "  --repeat N   run predict on the frame N times; print the median per-frame cost\n"
    "  --compare    also time predict() called from Python, interleaved, in this process\n"
    "  --thread     run the frames on a second C++ thread (shows the GIL hand-over)\n"
    "  --own        copy the depth into a buffer this program owns instead of borrowing it\n"
    "  --force      replace OUT if it exists\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--backend") o.backend = value();
    else if (a == "--precision") o.precision = value();
    else if (a == "--repeat") {
      std::string v = value();
      try {
        std::size_t used = 0;
        o.repeat = std::stoi(v, &used);
        if (used != v.size() || o.repeat < 1) throw std::invalid_argument(v);
      } catch (const std::exception&) {
        throw UsageError("--repeat needs a whole number of at least 1, got '" + v + "'");
      }
    } else if (a == "--compare") o.compare = true;
    else if (a == "--thread") o.thread = true;
    else if (a == "--own") o.own = true;
    else if (a == "--force") o.force = true;
    else if (a == "-h" || a == "--help") throw UsageError("");
    else if (a.size() > 1 && a[0] == '-') throw UsageError("unknown option " + a);
    else positional.push_back(a);
  }
  if (positional.size() != 3) throw UsageError("expected BUNDLE IMAGE OUT");
  o.bundle = positional[0];
  o.image = positional[1];
  o.out = positional[2];
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

using Clock = std::chrono::steady_clock;

struct Loop {
  std::vector<double> host_ms;      // per frame: C++ -> Python -> runtime -> C++
  std::vector<double> python_ms;    // per frame: estimator.predict() timed inside Python (--compare)
  std::vector<double> boundary_us;  // per call: the same round trip around a no-op (--compare)
  DepthMap depth;                   // the last frame's, borrowed (unless --own)
};

// One frame, C++ -> Python -> runtime -> C++: `predict` is depthrt.embed.predict_depth (or, with
// `owned`, predict_into, and the depth lands in that buffer).
DepthMap run_frame(const py::object& predict, const py::object& est, const Frame& frame,
                   std::vector<float>* owned) {
  py::array view = lend(frame);
  DepthMap depth;
  if (owned) {
    owned->resize(std::size_t(frame.height) * frame.width);
    py::array_t<float> out({py::ssize_t(frame.height), py::ssize_t(frame.width)}, owned->data(),
                           py::capsule(owned->data(), [](void*) {}));
    call([&] { predict(est, view, out); });
    depth.data = owned->data();
    depth.height = frame.height;
    depth.width = frame.width;
  } else {
    depth = borrow_depth(call([&] { return predict(est, view); }));
  }
  // The frame is only lent for the call: nothing in Python may still hold the view.
  if (view.ref_count() != 1) throw std::runtime_error("depthrt kept a reference to the input frame");
  return depth;
}

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Runs the frames; the GIL must be held. With --compare, each frame is followed by one
// predict() timed inside Python (depthrt.embed.time_predict), so both sides see the same
// machine state, and then by the same round trip as ours around a Python no-op that returns
// the last depth map: that is the embedding's own cost, free of the model's noise.
void run_frames(const Options& o, const py::module_& embed, const py::object& est, const Frame& frame,
                std::vector<float>* owned, Loop& loop) {
  py::object predict = embed.attr(owned ? "predict_into" : "predict_depth");
  py::object time_predict = embed.attr("time_predict");
  for (int i = 0; i < o.repeat; ++i) {
    auto t0 = Clock::now();
    DepthMap depth = run_frame(predict, est, frame, owned);
    loop.host_ms.push_back(ms_since(t0));
    loop.depth = std::move(depth);
    if (o.compare) {
      double seconds = call([&] {
        py::list times = time_predict(est, lend(frame), 1);
        return times[0].cast<double>();
      });
      loop.python_ms.push_back(seconds * 1e3);
      py::dict scope;
      scope["depth"] = owned ? py::object(py::array_t<float>({loop.depth.height, loop.depth.width}, loop.depth.data))
                             : py::object(loop.depth.array);
      py::object no_op = py::eval("lambda estimator, image: depth", scope);
      auto t1 = Clock::now();
      DepthMap same = run_frame(no_op, est, frame, nullptr);
      loop.boundary_us.push_back(ms_since(t1) * 1e3);
    }
  }
}

Frame read_frame(py::module_& embed, const std::string& path) {
  // Decoded by the runtime's reader (EXIF orientation, greyscale, alpha handled as for
  // `depthrt predict`), then copied once into memory this program owns, standing in for a
  // frame an application decoded itself. From here on the pixels are never copied.
  py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast> rgb =
      call([&] { return embed.attr("read_image")(path); });
  Frame frame;
  frame.height = int(rgb.shape(0));
  frame.width = int(rgb.shape(1));
  frame.pixels.assign(rgb.data(), rgb.data() + rgb.size());
  return frame;
}

// Everything that touches Python, with the interpreter running. A Python exception that escapes
// is converted by run() below while the interpreter is still up.
int run_with_python(const Options& o) {
  py::module_ embed = call([] {
    try {
      return py::module_::import("depthrt.embed");
    } catch (py::error_already_set& e) {
      if (!e.matches(PyExc_ImportError)) throw;
      py::module_ sys = py::module_::import("sys");
      throw std::runtime_error("cannot import depthrt.embed with Python " + std::string(py::str(sys.attr("executable"))) +
                               " (" + std::string(py::str(e.value())) + "): install depthrt in that environment, "
                               "or point DEPTHRT_PYTHON at the python of one that has it");
    }
  });
  call([&] { embed.attr("output_format")(o.out, py::arg("overwrite") = o.force); });  // a bad OUT fails before the slow work
  py::object est = call([&] {
    return embed.attr("load")(o.bundle, py::arg("backend") = o.backend, py::arg("precision") = o.precision);
  });
  Frame frame = read_frame(embed, o.image);

  std::vector<float> owned;
  Loop loop;
  if (o.thread) {
    // The thread that started Python holds the GIL: it must release it before any other thread
    // can take it. The worker's Python objects all die inside its gil_scoped_acquire, except the
    // borrowed depth, which moves out and is released below with the GIL held again.
    std::exception_ptr failure;
    {
      py::gil_scoped_release released;
      std::thread worker([&] {
        try {
          py::gil_scoped_acquire gil;
          call([&] { run_frames(o, embed, est, frame, o.own ? &owned : nullptr, loop); });
        } catch (...) {
          failure = std::current_exception();
        }
      });
      worker.join();
    }
    if (failure) std::rethrow_exception(failure);
  } else {
    run_frames(o, embed, est, frame, o.own ? &owned : nullptr, loop);
  }

  // Use the depth from C++: the borrowed (or owned) pointer is all we read.
  const DepthMap& d = loop.depth;
  std::size_t n = std::size_t(d.height) * d.width;
  float lo = d.data[0], hi = d.data[0];
  for (std::size_t i = 1; i < n; ++i) {
    lo = std::min(lo, d.data[i]);
    hi = std::max(hi, d.data[i]);
  }
  std::string backend = call([&] { return py::str(est.attr("backend")).cast<std::string>(); });
  std::string kind = call([&] { return py::str(est.attr("kind")).cast<std::string>(); });
  std::cout << "backend " << backend << ": depth " << d.width << "x" << d.height << " float32 " << kind
            << " (" << (o.own ? "owned" : "borrowed") << "), min " << lo << " max " << hi << "\n";

  // Write through the runtime (atomic, refuses to overwrite without --force); the array handed
  // over is a view of the very buffer read above.
  py::array_t<float> out_view({py::ssize_t(d.height), py::ssize_t(d.width)}, d.data,
                              py::capsule(d.data, [](void*) {}));
  std::string written = call([&] {
    return py::str(embed.attr("write_depth")(o.out, out_view, py::arg("overwrite") = o.force)).cast<std::string>();
  });
  std::cout << "wrote " << written << "\n";

  if (o.repeat > 1) {
    // The first frame pays one-off costs (allocations, ORT's first run): report it apart.
    std::vector<double> steady(loop.host_ms.begin() + 1, loop.host_ms.end());
    double host = median(steady);
    std::cout.setf(std::ios::fixed);
    std::cout.precision(3);
    std::cout << "per-frame median over " << steady.size() << " frames (first frame " << loop.host_ms[0]
              << " ms): C++ -> predict -> C++ " << host << " ms\n";
    if (o.compare) {
      double python = median(std::vector<double>(loop.python_ms.begin() + 1, loop.python_ms.end()));
      std::cout << "per-frame median, predict() called from Python in this process: " << python
                << " ms (C++/Python x" << host / python << ")\n";
      std::cout << "embedding round trip alone (lend frame, call, borrow depth; no-op in place of predict): "
                << median(loop.boundary_us) << " us median\n";
    }
  }
  return 0;
}

int run(const Options& o) {
  Interpreter interpreter(python_executable());
  // No py::error_already_set may outlive the interpreter (its destructor needs Python), so
  // every one is turned into depthrt::Error here, before `interpreter` stops Python.
  return call([&] { return run_with_python(o); });
}

}  // namespace depthrt

int main(int argc, char** argv) {
  depthrt::Options options;
  try {
    options = depthrt::parse(argc, argv);
  } catch (const depthrt::UsageError& e) {
    if (*e.what()) std::cerr << "depthrt_embed: error: " << e.what() << "\n";
    std::cerr << depthrt::kUsage;
    return *e.what() ? 2 : 0;
  }
  try {
    return depthrt::run(options);
  } catch (const depthrt::Error& e) {
    if (e.from_depthrt()) {
      std::cerr << "depthrt_embed: error: " << e.what() << "\n";
      return e.exit_code() ? e.exit_code() : 1;
    }
    std::cerr << "depthrt_embed: internal error: " << e.type() << ": " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "depthrt_embed: error: " << e.what() << "\n";
    return 1;
  }
}
