#pragma once  // placeholder: filled by the op family's implementation
