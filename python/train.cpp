#include "bindings.h"

namespace eformer::python {

void bind_train(py::module_& m) {}  // placeholder: filled by the area's implementation

}  // namespace eformer::python
