#include "bindings.h"

namespace eformer::python {

void bind_nn(py::module_& m) {}  // placeholder: filled by the area's implementation

}  // namespace eformer::python
