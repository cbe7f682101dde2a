#include "bindings.h"

namespace eformer::python {

void bind_models(py::module_& m) {}  // placeholder: filled by the area's implementation

}  // namespace eformer::python
