// eformer.data: the byte-level tokenizer, corpora and their splits, training and evaluation batches.
#include "eformer/data/data.h"

#include "bindings.h"

namespace eformer::python {
namespace {

using namespace eformer::data;

std::string path_arg(const py::object& path) {
  return py::str(py::module_::import("os").attr("fspath")(path)).cast<std::string>();
}

// A str (encoded as UTF-8) or bytes-like object, as bytes.
std::string text_arg(const py::object& text, const char* who) {
  if (py::isinstance<py::str>(text)) return text.cast<std::string>();
  if (py::isinstance<py::bytes>(text)) return std::string(text.cast<py::bytes>());
  if (py::isinstance<py::bytearray>(text) || py::isinstance<py::memoryview>(text))
    return std::string(py::bytes(text));
  throw ValueError(detail::concat(who, ": expected str or bytes, got ",
                                  std::string(py::str(py::type::of(text).attr("__name__")))));
}

// Token ids from a Tensor or any sequence of ints (list, tuple, numpy array), as bytes.
std::string decode_arg(const py::object& ids) {
  if (py::isinstance<Tensor>(ids)) return ByteTokenizer().decode(ids.cast<Tensor>());
  return ByteTokenizer().decode(ids.cast<std::vector<int64_t>>());
}

Split split_arg(const py::object& split, const char* fallback) {
  return parse_split(split.is_none() ? std::string(fallback) : split.cast<std::string>());
}

// A Corpus (with a split name, `fallback` when None) or a 1-D int64 Tensor of token ids.
TokenSource source_arg(const py::object& source, const py::object& split, const char* fallback,
                       const char* who) {
  if (py::isinstance<Corpus>(source))
    return TokenSource(source.cast<const Corpus&>(), split_arg(split, fallback));
  EF_CHECK(py::isinstance<Tensor>(source), ValueError, who,
           ": source must be a data.Corpus or a 1-D int64 Tensor of token ids, got ",
           std::string(py::str(py::type::of(source).attr("__name__"))));
  EF_CHECK(split.is_none(), ValueError, who, ": split='", std::string(py::str(split)),
           "' applies to a Corpus source; a Tensor source is already one split");
  return TokenSource(source.cast<Tensor>());
}

py::tuple batch_tuple(Batch b) { return py::make_tuple(std::move(b.inputs), std::move(b.targets)); }

SplitFractions fractions_arg(double valid, double test) { return SplitFractions{valid, test}; }

}  // namespace

void bind_data(py::module_& m) {
  py::module_ dm = m.def_submodule(
      "data", "Byte-level tokenizer, corpora with train/valid/test splits, training and evaluation batches");

  py::class_<ByteTokenizer>(dm, "ByteTokenizer",
                            "Byte-level tokenizer: 256 tokens, token = byte value; lossless for any text.")
      .def(py::init<>())
      .def_property_readonly("vocab_size", &ByteTokenizer::vocab_size)
      .def(
          "encode",
          [](const ByteTokenizer& t, const py::object& text) {
            return t.encode_tensor(text_arg(text, "encode"));
          },
          py::arg("text"), "The bytes of text (a str is encoded as UTF-8) as an int64 Tensor [len(bytes)].")
      .def(
          "decode",
          [](const ByteTokenizer&, const py::object& ids, const std::string& errors) {
            return py::bytes(decode_arg(ids)).attr("decode")("utf-8", errors);
          },
          py::arg("ids"), py::arg("errors") = "replace",
          "The text of a Tensor or list of ids. Ids outside [0, 255] raise IndexError naming the id; bytes "
          "that are not valid UTF-8 are handled by `errors` as in bytes.decode (default 'replace').")
      .def(
          "decode_bytes",
          [](const ByteTokenizer&, const py::object& ids) { return py::bytes(decode_arg(ids)); },
          py::arg("ids"), "The bytes of a Tensor or list of ids (exact inverse of encode).")
      .def("__repr__", [](const ByteTokenizer&) { return std::string("ByteTokenizer(vocab_size=256)"); });

  py::class_<Utf8StreamDecoder>(
      dm, "Utf8StreamDecoder",
      "Prints a stream of byte tokens cleanly: push() returns only complete UTF-8 characters and holds "
      "back an incomplete one; invalid bytes become U+FFFD; flush() ends the stream.")
      .def(py::init<>())
      .def(
          "push",
          [](Utf8StreamDecoder& d, const py::object& ids) -> std::string {
            if (py::isinstance<py::int_>(ids)) return d.push(ids.cast<int64_t>());
            std::string out;
            if (py::isinstance<Tensor>(ids)) {
              for (int64_t id : ids.cast<Tensor>().contiguous_data().to_int_vector()) out += d.push(id);
            } else {
              for (int64_t id : ids.cast<std::vector<int64_t>>()) out += d.push(id);
            }
            return out;
          },
          py::arg("ids"), "Add one id (or a list/Tensor of ids); returns the text they complete.")
      .def(
          "push_bytes", [](Utf8StreamDecoder& d, const py::bytes& b) { return d.push_bytes(std::string(b)); },
          py::arg("data"))
      .def("flush", &Utf8StreamDecoder::flush)
      .def_property_readonly("pending", &Utf8StreamDecoder::pending, "Bytes held back (0..3).");

  dm.def(
      "utf8_invalid_offset", [](const py::bytes& b) { return utf8_invalid_offset(std::string(b)); },
      py::arg("data"), "Offset of the first invalid UTF-8 sequence (strict RFC 3629), or -1 when valid.");

  py::class_<Corpus>(dm, "Corpus",
                     "The bytes of a UTF-8 text and its contiguous train/valid/test splits (default 90/5/5).")
      .def_static(
          "from_path",
          [](const py::object& path, double valid, double test) {
            std::string p = path_arg(path);
            py::gil_scoped_release release;
            return Corpus::from_path(p, fractions_arg(valid, test));
          },
          py::arg("path"), py::arg("valid_fraction") = 0.05, py::arg("test_fraction") = 0.05,
          "A UTF-8 text file, or a folder: every non-hidden regular file below it, recursively, sorted by "
          "relative path and joined with a single '\\n'.")
      .def_static(
          "from_text",
          [](const py::object& text, const std::string& source, double valid, double test) {
            return Corpus::from_text(text_arg(text, "Corpus.from_text"), source, fractions_arg(valid, test));
          },
          py::arg("text"), py::arg("source") = "<text>", py::arg("valid_fraction") = 0.05,
          py::arg("test_fraction") = 0.05)
      .def_static(
          "default",
          [](double valid, double test) {
            py::gil_scoped_release release;
            return Corpus::default_corpus(fractions_arg(valid, test));
          },
          py::arg("valid_fraction") = 0.05, py::arg("test_fraction") = 0.05,
          "The default corpus (data/kjv.txt, or $EFORMER_DATA); run scripts/prepare-data.sh first.")
      .def_static(
          "fashion_mnist",
          [](const std::string& dir) {
            py::gil_scoped_release release;
            return fashion_mnist_corpus(dir);
          },
          py::arg("dir") = "",
          "Fashion-MNIST for pixel-by-pixel generation: records of a start token 0 and 784 grey levels "
          "(a model of context 784), unit 'dim'.")
      .def_property_readonly("record_length", &Corpus::record_length)
      .def_property_readonly("unit", &Corpus::unit)
      .def_property_readonly("source", &Corpus::source)
      .def_property_readonly("size", &Corpus::size)
      .def("__len__", &Corpus::size)
      .def_property_readonly("train_size", [](const Corpus& c) { return c.split_size(Split::Train); })
      .def_property_readonly("valid_size", [](const Corpus& c) { return c.split_size(Split::Valid); })
      .def_property_readonly("test_size", [](const Corpus& c) { return c.split_size(Split::Test); })
      .def(
          "bounds",
          [](const Corpus& c, const std::string& name) {
            Split s = parse_split(name);
            return std::make_pair(c.split_begin(s), c.split_end(s));
          },
          py::arg("split"), "(begin, end) byte offsets of a split in the whole text.")
      .def(
          "split", [](const Corpus& c, const std::string& name) { return c.split_tokens(parse_split(name)); },
          py::arg("split"), "The tokens of 'train', 'valid' or 'test' as an int64 Tensor.")
      .def(
          "text",
          [](const Corpus& c, const py::object& split) -> py::bytes {
            if (split.is_none()) return py::bytes(c.text().data(), c.text().size());
            std::string_view t = c.split_text(parse_split(split.cast<std::string>()));
            return py::bytes(t.data(), t.size());
          },
          py::arg("split") = py::none(), "The bytes of the whole corpus, or of one split.")
      .def("check_context", &Corpus::check_context, py::arg("context"),
           "ValueError naming the sizes when some split holds fewer than context + 1 tokens.")
      .def("__repr__", [](const Corpus& c) {
        return detail::concat("Corpus('", c.source(), "', ", c.size(), " bytes: train ",
                              c.split_size(Split::Train), ", valid ", c.split_size(Split::Valid), ", test ",
                              c.split_size(Split::Test), ")");
      });

  dm.def("default_corpus_path", &default_corpus_path,
         "$EFORMER_DATA when set, else data/kjv.txt in eformer's resource folder (share/eformer beside the "
         "installed module); OSError saying where it looked when it is missing.");

  dm.def(
      "duplication_batch",
      [](uint64_t seed, uint64_t index, int64_t batch, int64_t half, int64_t vocab) {
        return batch_tuple(duplication_batch(seed, index, batch, half, vocab));
      },
      py::arg("seed"), py::arg("index"), py::arg("batch"), py::arg("half"), py::arg("vocab") = 128,
      "The Reformer's duplication task: (inputs, targets), inputs [batch, 2 half] = 0 w 0 w with w of half - 1 "
      "symbols in 1 .. vocab - 1, targets the next tokens on the second w and -100 elsewhere; a pure function of "
      "(seed, index).");
  dm.def(
      "batch_offsets",
      [](int64_t split_size, int64_t batch_size, int64_t context, uint64_t seed, uint64_t step) {
        return batch_offsets(split_size, batch_size, context, seed, step);
      },
      py::arg("split_size"), py::arg("batch_size"), py::arg("context"), py::arg("seed"), py::arg("step"),
      "The window offsets of training batch `step`: a pure function of (seed, step) through Philox.");
  dm.def(
      "batch",
      [](const py::object& source, int64_t batch_size, int64_t context, uint64_t seed, uint64_t step,
         const py::object& split) {
        TokenSource tokens = source_arg(source, split, "train", "batch");
        Batch b;
        {
          py::gil_scoped_release release;
          b = sample_batch(tokens, batch_size, context, seed, step);
        }
        return batch_tuple(std::move(b));
      },
      py::arg("source"), py::arg("batch_size"), py::arg("context"), py::arg("seed") = 0, py::arg("step") = 0,
      py::arg("split") = py::none(),
      "Training batch `step`: (inputs, targets), int64 [batch_size, context], targets = inputs shifted by "
      "one. source: a Corpus (split defaults to 'train') or a 1-D int64 Tensor of tokens. The windows are a "
      "pure function of (seed, step), so a resumed run needs only the step number.");

  py::class_<EvalWindows>(
      dm, "EvalWindows",
      "Non-overlapping evaluation windows over a split: each token after the first is a target exactly once; "
      "full windows come batch_size at a time, the final shorter window alone in the last batch. Iterate for "
      "(inputs, targets); bits per char = sum of per-target losses / (num_targets * ln 2).")
      .def(py::init(
               [](const py::object& source, int64_t context, int64_t batch_size, const py::object& split) {
                 return EvalWindows(source_arg(source, split, "valid", "EvalWindows"), context, batch_size);
               }),
           py::arg("source"), py::arg("context"), py::arg("batch_size") = 1, py::arg("split") = py::none())
      .def_property_readonly("context", &EvalWindows::context)
      .def_property_readonly("batch_size", &EvalWindows::batch_size)
      .def_property_readonly("num_windows", &EvalWindows::num_windows)
      .def_property_readonly("num_targets", &EvalWindows::num_targets)
      .def("__len__", &EvalWindows::num_batches)
      .def(
          "__getitem__",
          [](const EvalWindows& w, int64_t i) {
            if (i < 0) i += w.num_batches();
            if (i < 0 || i >= w.num_batches()) throw py::index_error("EvalWindows: batch index out of range");
            return batch_tuple(w.batch(i));
          },
          py::arg("index"))
      .def(
          "offsets", [](const EvalWindows& w, int64_t i) { return w.batch(i).offsets; }, py::arg("index"),
          "Each row's first input token of batch `index`, relative to the split's start.");
  // __iter__ comes from the sequence protocol (__len__ + __getitem__ raising IndexError).
  dm.def(
      "eval_windows",
      [](const py::object& source, int64_t context, int64_t batch_size, const py::object& split) {
        return EvalWindows(source_arg(source, split, "valid", "eval_windows"), context, batch_size);
      },
      py::arg("source"), py::arg("context"), py::arg("batch_size") = 1, py::arg("split") = py::none(),
      "EvalWindows over a Corpus split (default 'valid') or a 1-D int64 Tensor of tokens.");
  bind_data_tasks(dm);
}

}  // namespace eformer::python
