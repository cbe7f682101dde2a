// eformer.data (continued): the Fashion-MNIST images, the LRA-style task generators (ListOps,
// Pathfinder) and greyscale PNG files.
#include "eformer/data/data.h"
#include "eformer/io/png.h"

#include "bindings.h"

namespace eformer::python {
namespace {

using namespace eformer::data;

std::vector<uint64_t> indices_arg(const py::object& indices) {
  if (py::isinstance<py::int_>(indices)) return {indices.cast<uint64_t>()};
  return indices.cast<std::vector<uint64_t>>();
}

Tensor labels_tensor(const std::vector<int64_t>& labels) {
  return Tensor::from_vector(labels, {int64_t(labels.size())});
}

}  // namespace

void bind_data_tasks(py::module_& dm) {
  dm.attr("LISTOPS_VOCAB") = kListOpsVocab;
  dm.attr("LISTOPS_CLASSES") = kListOpsClasses;
  dm.def(
      "listops",
      [](uint64_t seed, const py::object& indices, int64_t min_length, int64_t max_length, int64_t max_depth,
         int64_t max_args, int64_t pad_to) {
        ListOpsOptions o{min_length, max_length, max_depth, max_args};
        validate(o);
        const std::vector<uint64_t> idx = indices_arg(indices);
        std::vector<ListOpsExample> examples(idx.size());
        {
          py::gil_scoped_release release;
          for (size_t i = 0; i < idx.size(); ++i) examples[i] = listops_example(seed, idx[i], o);
        }
        int64_t width = pad_to;
        for (const auto& ex : examples) {
          EF_CHECK(pad_to <= 0 || int64_t(ex.tokens.size()) <= pad_to, ValueError, "listops: an example of ",
                   ex.tokens.size(), " tokens does not fit pad_to=", pad_to);
          width = std::max(width, int64_t(ex.tokens.size()));
        }
        std::vector<int64_t> tokens(examples.size() * size_t(width), 0), labels;
        for (size_t i = 0; i < examples.size(); ++i) {
          std::copy(examples[i].tokens.begin(), examples[i].tokens.end(), tokens.begin() + i * size_t(width));
          labels.push_back(examples[i].label);
        }
        return py::make_tuple(Tensor::from_vector(tokens, {int64_t(examples.size()), width}), labels_tensor(labels));
      },
      py::arg("seed"), py::arg("indices"), py::arg("min_length") = 500, py::arg("max_length") = 2000,
      py::arg("max_depth") = 10, py::arg("max_args") = 10, py::arg("pad_to") = 0,
      "ListOps examples (LRA's grammar; lengths in (min_length, max_length), exclusive) for each index: "
      "(tokens int64 [B, L] padded with 0 to the longest or to pad_to, labels int64 [B] = index mod 10). "
      "A pure function of (seed, index); tokens: 1 + digit, 11 MIN, 12 MAX, 13 MED, 14 SM, 15 ']'.");
  dm.def(
      "listops_evaluate",
      [](const py::object& expr) {
        if (py::isinstance<py::str>(expr)) return listops_evaluate(listops_tokenize(expr.cast<std::string>()));
        if (py::isinstance<Tensor>(expr)) {
          Tensor t = expr.cast<Tensor>().contiguous_data();
          EF_CHECK(t.dtype() == DType::Int64 && t.dim() == 1, ValueError,
                   "listops_evaluate: expected a 1-D int64 Tensor, got ", t.describe());
          return listops_evaluate(std::vector<int64_t>(t.data<int64_t>(), t.data<int64_t>() + t.numel()));
        }
        return listops_evaluate(expr.cast<std::vector<int64_t>>());
      },
      py::arg("expression"), "The value (0..9) of a ListOps expression: text ('[MAX 2 9 ]') or token ids.");
  dm.def(
      "listops_tokenize", [](const std::string& text) { return listops_tokenize(text); }, py::arg("text"));
  dm.def(
      "listops_text", [](const std::vector<int64_t>& tokens) { return listops_text(tokens); }, py::arg("tokens"));

  dm.def(
      "pathfinder",
      [](uint64_t seed, const py::object& indices, int64_t size, int64_t min_steps, int64_t max_steps,
         double max_turn, int64_t dash, int64_t distractors) {
        PathfinderOptions o{size, min_steps, max_steps, max_turn, dash, distractors};
        validate(o);
        const std::vector<uint64_t> idx = indices_arg(indices);
        const int64_t B = int64_t(idx.size()), N = size * size;
        std::vector<int64_t> pixels(size_t(B * N)), labels(idx.size()), dots(idx.size() * 2);
        {
          py::gil_scoped_release release;
          for (int64_t i = 0; i < B; ++i) {
            PathfinderExample ex = pathfinder_example(seed, idx[size_t(i)], o);
            std::copy(ex.pixels.begin(), ex.pixels.end(), pixels.begin() + i * N);
            labels[size_t(i)] = ex.label;
            dots[size_t(2 * i)] = ex.dots[0], dots[size_t(2 * i + 1)] = ex.dots[1];
          }
        }
        return py::make_tuple(Tensor::from_vector(pixels, {B, N}), labels_tensor(labels),
                              Tensor::from_vector(dots, {B, 2}));
      },
      py::arg("seed"), py::arg("indices"), py::arg("size") = 32, py::arg("min_steps") = 10,
      py::arg("max_steps") = 18, py::arg("max_turn") = 0.5, py::arg("dash") = 2, py::arg("distractors") = 1,
      "Pathfinder images for each index: (pixels int64 [B, size^2] grey levels, labels int64 [B] = index mod 2 "
      "(1: the dots are joined), dots int64 [B, 2] (the dots' centres as y * size + x)). A pure function of "
      "(seed, index).");

  dm.def("fashion_mnist_dir", &fashion_mnist_dir,
         "The folder of the decompressed Fashion-MNIST idx files ($EFORMER_FASHION_MNIST, data/fashion-mnist, "
         "or /usr/share/datasets/fashion-mnist); OSError saying how to prepare them when absent.");
  dm.def(
      "fashion_mnist",
      [](const std::string& split, const std::string& dir) {
        ImageSet s;
        {
          py::gil_scoped_release release;
          s = load_fashion_mnist(parse_split(split), dir);
        }
        py::array_t<uint8_t> pixels({s.count, kFashionMnistPixels}), labels(s.count);
        std::copy(s.pixels.begin(), s.pixels.end(), pixels.mutable_data());
        std::copy(s.labels.begin(), s.labels.end(), labels.mutable_data());
        return py::make_tuple(pixels, labels);
      },
      py::arg("split") = "train", py::arg("dir") = "",
      "Fashion-MNIST images of a split ('train': the first 55,000 training images, 'valid': the last 5,000, "
      "'test': the 10,000 test images) as numpy uint8 arrays (pixels [n, 784] grey levels, labels [n]).");

  dm.def(
      "encode_png",
      [](const std::vector<uint8_t>& pixels, int64_t width, int64_t height) {
        return py::bytes(io::encode_png(io::GreyImage{width, height, pixels}));
      },
      py::arg("pixels"), py::arg("width"), py::arg("height"),
      "An 8-bit greyscale PNG file (uncompressed deflate blocks) of row-major pixels, as bytes.");
  dm.def(
      "write_png",
      [](const py::object& path, const std::vector<uint8_t>& pixels, int64_t width, int64_t height) {
        io::write_png(py::str(py::module_::import("os").attr("fspath")(path)).cast<std::string>(),
                      io::GreyImage{width, height, pixels});
      },
      py::arg("path"), py::arg("pixels"), py::arg("width"), py::arg("height"));
  dm.def(
      "decode_png",
      [](const py::bytes& data) {
        io::GreyImage img = io::decode_png(std::string(data));
        return py::make_tuple(img.width, img.height,
                              py::bytes(reinterpret_cast<const char*>(img.pixels.data()), img.pixels.size()));
      },
      py::arg("data"),
      "(width, height, pixels bytes) of a PNG written by encode_png (8-bit grey, stored blocks); OSError otherwise.");
}

}  // namespace eformer::python
