// The logger a TensorRT plugin library reports its errors to: the one TensorRT hands over through
// setLoggerFinder. Header-only; each plugin library (hidden visibility) keeps its own instance.
#pragma once

#include <mutex>

#include <NvInferRuntime.h>

namespace levit_plugins
{

class PluginLogger
{
public:
    void setFinder(nvinfer1::ILoggerFinder* finder) noexcept
    {
        std::lock_guard<std::mutex> lock(mMutex);
        mFinder = finder;
    }

    void error(char const* message) noexcept
    {
        std::lock_guard<std::mutex> lock(mMutex);
        nvinfer1::ILogger* logger = mFinder != nullptr ? mFinder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(nvinfer1::ILogger::Severity::kERROR, message);
        }
    }

private:
    std::mutex mMutex;
    nvinfer1::ILoggerFinder* mFinder{nullptr};
};

inline PluginLogger& pluginLogger() noexcept
{
    static PluginLogger logger;
    return logger;
}

} // namespace levit_plugins
