// Shape formatting for the PyTorch ops' error messages, shared by every op library.
#pragma once

#include <string>

#include <c10/util/ArrayRef.h>

namespace levit_plugins
{

//! "[16, 6, 196, 196]", formatted without iostreams: numbers streamed into an error message from an
//! op library crashed on the H100 machine (std::ostream::_M_insert<long> ran inside the op; NOTES.md).
inline std::string shapeText(c10::IntArrayRef sizes)
{
    std::string text = "[";
    for (size_t i = 0; i < sizes.size(); ++i)
    {
        text += (i == 0 ? "" : ", ") + std::to_string(sizes[i]);
    }
    return text + "]";
}

} // namespace levit_plugins
