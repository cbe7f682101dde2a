#include "bindings.h"

namespace eformer::python {

void bind_io_optim(py::module_& m) {}  // placeholder: filled by the area's implementation

}  // namespace eformer::python
