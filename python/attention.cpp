#include "bindings.h"

namespace eformer::python {

void bind_attention(py::module_& m) {}  // placeholder: filled by the area's implementation

}  // namespace eformer::python
